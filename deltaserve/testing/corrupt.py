"""Copies of a checkpoint with one tensor removed, renamed or reshaped (for loader error tests)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch

from deltaserve.testing import shards


def _resized(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """`t`'s values repeated or cut to fill `shape` (so the bytes stay plausible)."""
    n = math.prod(shape)
    flat = t.reshape(-1)
    if flat.numel() == 0:
        return torch.zeros(shape, dtype=t.dtype)
    reps = -(-n // flat.numel())
    return flat.repeat(reps)[:n].reshape(shape).clone()


def make_corrupted_copy(
    src: str | Path,
    dst: str | Path,
    *,
    remove: str | None = None,
    rename: tuple[str, str] | None = None,
    reshape: tuple[str, tuple[int, ...]] | None = None,
) -> Path:
    """Copy checkpoint `src` to `dst` (new or empty dir) with edits, keeping the index consistent.

    remove: name of a tensor to drop.
    rename: (old name, new name); the tensor stays in its shard.
    reshape: (name, new shape); values are the old ones repeated/cut to the new size.
    At least one edit is required; each named tensor must exist (ValueError naming the argument).
    """
    src, dst = Path(src), Path(dst)
    if remove is None and rename is None and reshape is None:
        raise ValueError("remove/rename/reshape: give at least one edit")
    index = shards.tensor_index(src)
    for arg, name in (
        ("remove", remove),
        ("rename", rename[0] if rename else None),
        ("reshape", reshape[0] if reshape else None),
    ):
        if name is not None and name not in index:
            raise ValueError(f"{arg}: tensor {name!r} is not in {src}")
    if rename is not None and rename[1] in index:
        raise ValueError(f"rename: target name {rename[1]!r} already exists in {src}")
    if reshape is not None and tuple(reshape[1]) == index[reshape[0]][0]:
        raise ValueError(f"reshape: {reshape[0]!r} already has shape {tuple(reshape[1])}")
    if dst.exists() and any(dst.iterdir()):
        raise ValueError(f"dst: {dst} exists and is not empty")
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file():
            shutil.copyfile(f, dst / f.name)
            (dst / f.name).chmod(0o644)

    def edit(fname: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(tensors)
        if remove is not None and remove in out:
            del out[remove]
        if rename is not None and rename[0] in out:
            out[rename[1]] = out.pop(rename[0])
        if reshape is not None and reshape[0] in out:
            out[reshape[0]] = _resized(out[reshape[0]], tuple(reshape[1]))
        return out

    shards.rewrite_checkpoint(dst, edit)
    return dst
