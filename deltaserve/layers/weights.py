"""Parameter creation with weight loaders and the shard bookkeeping strict loading relies on.

Every parameter a model owns carries:
- `weight_loader(param, loaded_weight, shard_id)`: copies a checkpoint tensor (or one shard of a
  merged parameter) into the parameter, raising `WeightShapeError` on a shape mismatch;
- `shard_ids`: the shards that together fill it (empty = one whole tensor). Loading with
  `shard_id=None` fills every shard at once (e.g. a fused-expert checkpoint tensor).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

WeightLoader = Callable[[nn.Parameter, torch.Tensor, Any], None]


class WeightShapeError(ValueError):
    """A checkpoint tensor whose shape does not fit the parameter (or shard) it maps to."""


def make_param(
    shape: Sequence[int],
    dtype: torch.dtype,
    device: torch.device | str | None,
    *,
    weight_loader: WeightLoader | None = None,
    shard_ids: Sequence[Any] = (),
) -> nn.Parameter:
    """An uninitialised, frozen parameter with its loader and shard ids attached."""
    param = nn.Parameter(torch.empty(tuple(shape), dtype=dtype, device=device), requires_grad=False)
    param.weight_loader = weight_loader or default_weight_loader  # type: ignore[attr-defined]
    param.shard_ids = tuple(shard_ids)  # type: ignore[attr-defined]
    return param


def check_shape(expected: torch.Size | Sequence[int], loaded: torch.Tensor, what: str) -> None:
    if tuple(loaded.shape) != tuple(expected):
        raise WeightShapeError(
            f"{what}: expected shape {tuple(expected)}, checkpoint has {tuple(loaded.shape)}"
        )


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor, shard_id: Any = None) -> None:
    """Whole-tensor copy (with dtype cast)."""
    if shard_id is not None:
        raise WeightShapeError(f"parameter has no shard {shard_id!r}")
    check_shape(param.shape, loaded, "tensor")
    param.data.copy_(loaded)


def row_shard_loader(offsets: dict[Any, tuple[int, int]]) -> WeightLoader:
    """Loader for a parameter whose rows (dim 0) are a concatenation of named shards.

    `offsets[shard] = (start, size)`. `shard_id=None` loads the whole concatenated tensor.
    """

    def load(param: nn.Parameter, loaded: torch.Tensor, shard_id: Any = None) -> None:
        if shard_id is None:
            check_shape(param.shape, loaded, "merged tensor")
            param.data.copy_(loaded)
            return
        if shard_id not in offsets:
            raise WeightShapeError(f"unknown shard {shard_id!r} (have {list(offsets)})")
        start, size = offsets[shard_id]
        target = param.data.narrow(0, start, size)
        check_shape(target.shape, loaded, f"shard {shard_id!r}")
        target.copy_(loaded)

    return load


def shard_offsets(sizes: dict[Any, int]) -> dict[Any, tuple[int, int]]:
    """Cumulative (start, size) per shard, in the dict's order."""
    out: dict[Any, tuple[int, int]] = {}
    start = 0
    for name, size in sizes.items():
        out[name] = (start, size)
        start += size
    return out
