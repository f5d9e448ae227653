"""Streaming reader for (sharded) safetensors checkpoints: one tensor in memory at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be read; the message names the file."""


class CheckpointReader:
    """Iterates `(name, tensor)` over `model.safetensors.index.json`'s shards or lone `*.safetensors`.

    Tensors are read one by one through memory-mapped `safe_open`, never a whole shard at once.
    """

    def __init__(self, path: str | Path) -> None:
        self.root = Path(path)
        if not self.root.is_dir():
            raise CheckpointError(f"checkpoint directory {self.root} does not exist")
        index = self.root / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise CheckpointError(f"{index}: unreadable index ({exc!r})") from None
            self._file_of = {name: self.root / file for name, file in weight_map.items()}
            for file in sorted(set(self._file_of.values())):
                if not file.is_file():
                    raise CheckpointError(f"{index} lists shard {file.name}, which is missing")
        else:
            files = sorted(self.root.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"no *.safetensors files in {self.root}")
            self._file_of = {}
            for file in files:
                with safe_open(str(file), framework="pt") as f:
                    for name in f.keys():
                        self._file_of[name] = file

    @property
    def names(self) -> list[str]:
        return list(self._file_of)

    def file_of(self, name: str) -> str:
        file = self._file_of.get(name)
        return file.name if file is not None else "?"

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        by_file: dict[Path, list[str]] = {}
        for name, file in self._file_of.items():
            by_file.setdefault(file, []).append(name)
        for file, names in by_file.items():
            try:
                with safe_open(str(file), framework="pt") as f:
                    present = set(f.keys())
                    for name in names:
                        if name not in present:
                            raise CheckpointError(
                                f"{file.name}: index lists tensor {name!r} but the shard lacks it"
                            )
                        yield name, f.get_tensor(name)
            except CheckpointError:
                raise
            except Exception as exc:  # corrupt header, truncated file, ...
                raise CheckpointError(f"{file.name}: cannot read safetensors shard ({exc})") from exc
