"""Small helpers to read and rewrite the safetensors files of a (tiny) checkpoint.

Tiny checkpoints fit in memory, so rewriting loads one whole shard; the engine's loader must not do
this for real checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_METADATA = {"format": "pt"}


def shard_files(ckpt_dir: Path) -> list[str]:
    """Names of the safetensors files of a checkpoint, in index order (or the single file)."""
    ckpt_dir = Path(ckpt_dir)
    index = ckpt_dir / INDEX_NAME
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return sorted(set(weight_map.values()))
    if (ckpt_dir / SINGLE_NAME).exists():
        return [SINGLE_NAME]
    raise ValueError(f"ckpt_dir: no {INDEX_NAME} or {SINGLE_NAME} in {ckpt_dir}")


def tensor_index(ckpt_dir: Path) -> dict[str, tuple[tuple[int, ...], str, str]]:
    """Every tensor of a checkpoint: name -> (shape, dtype name, file name). Reads headers only."""
    from safetensors import safe_open

    out: dict[str, tuple[tuple[int, ...], str, str]] = {}
    for fname in shard_files(ckpt_dir):
        with safe_open(str(Path(ckpt_dir) / fname), framework="pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                out[name] = (tuple(sl.get_shape()), sl.get_dtype(), fname)
    return out


def load_shard(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def save_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=_METADATA)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def rewrite_checkpoint(
    ckpt_dir: Path,
    edit: Callable[[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]],
) -> None:
    """Apply `edit(file_name, tensors) -> tensors` to every shard and rewrite the index to match.

    A shard whose tensors come back unchanged (same objects, same names) is not rewritten.
    """
    ckpt_dir = Path(ckpt_dir)
    files = shard_files(ckpt_dir)
    weight_map: dict[str, str] = {}
    total = 0
    numel = 0
    for fname in files:
        tensors = load_shard(ckpt_dir / fname)
        new = edit(fname, dict(tensors))
        changed = new.keys() != tensors.keys() or any(new[k] is not tensors[k] for k in new)
        if changed:
            save_shard(new, ckpt_dir / fname)
        for name, t in new.items():
            if name in weight_map:
                raise ValueError(f"tensor {name} written to both {weight_map[name]} and {fname}")
            weight_map[name] = fname
            total += _nbytes(t)
            numel += t.numel()
    index = ckpt_dir / INDEX_NAME
    if index.exists():
        data = json.loads(index.read_text())
        meta = {**data.get("metadata", {}), "total_size": total}
        if "total_parameters" in meta:
            meta["total_parameters"] = numel
        data["metadata"] = meta
        data["weight_map"] = dict(sorted(weight_map.items()))
        index.write_text(json.dumps(data, indent=2) + "\n")
