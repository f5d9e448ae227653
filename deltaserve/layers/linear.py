"""Linear layers (vLLM-style names) whose parameters carry weight loaders.

Tensor parallelism is not implemented yet: every class here holds the full weight. The names mirror
vLLM's so that the TP split (column: output rows; row: input columns) slots in without renames.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deltaserve.layers.weights import make_param, row_shard_loader, shard_offsets
from deltaserve.ops import gemv
from deltaserve.ops.fp8 import FP8_DTYPE, block_fp8_linear


class ReplicatedLinear(nn.Module):
    """`y = x Wᵀ (+ b)` with `W [out, in]`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = make_param((out_features, in_features), dtype, device)
        self.bias = make_param((out_features,), dtype, device) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in] -> [T, out]
        if self.weight.dtype == FP8_DTYPE:  # converted by layers.fp8.apply_fp8
            return block_fp8_linear(
                x,
                self.weight,
                self.weight_scale_inv,
                None if self.fp8_rows_plain else self.weight_row_block,
                self.bias,
                block_k=self.fp8_block_k,
            )
        return gemv.linear(x, self.weight, self.bias)


class ColumnParallelLinear(ReplicatedLinear):
    """Output-dim-parallel linear (TP split over output rows)."""


class RowParallelLinear(ReplicatedLinear):
    """Input-dim-parallel linear (TP split over input columns, all-reduce after)."""


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several projections of the same input fused into one GEMM; rows are the shards in order.

    `shards` maps a shard id (e.g. "gate", "up") to its number of output rows. The checkpoint may
    hold each shard as its own tensor (loaded with that shard id) or the merged tensor (shard id None).
    """

    def __init__(
        self,
        in_features: int,
        shards: dict[str, int],
        *,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(in_features, sum(shards.values()), bias=bias, dtype=dtype, device=device)
        self.shard_sizes = dict(shards)
        loader = row_shard_loader(shard_offsets(self.shard_sizes))
        for p in (self.weight, self.bias):
            if p is not None:
                p.weight_loader = loader  # type: ignore[attr-defined]
                p.shard_ids = tuple(self.shard_sizes)  # type: ignore[attr-defined]

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Views of the output per shard, in order."""
        return torch.split(y, list(self.shard_sizes.values()), dim=-1)


class QKVParallelLinear(MergedColumnParallelLinear):
    """Fused q/k/v projection (`q` may carry extra per-head rows, e.g. the attention output gate)."""

    def __init__(
        self,
        in_features: int,
        q_size: int,
        kv_size: int,
        *,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(
            in_features, {"q": q_size, "k": kv_size, "v": kv_size}, bias=bias, dtype=dtype, device=device
        )


_PLAIN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def fuse_weights(linears: Sequence[ReplicatedLinear]) -> torch.Tensor | None:
    """Store the weights of linears applied to one input in one `[sum out, in]` tensor, each
    `weight` becoming a view of its rows (no extra memory), so that `F.linear(x, merged)` is the
    concatenation of their outputs in one GEMM. Current values are kept and parameter objects
    (names, loaders, shard ids) stay the same, so loading fills the merged storage.

    Returns the merged weight, or None when one GEMM cannot serve them all (a bias, a quantised or
    non-float weight, different dtypes, devices or input widths); each weight then owns its storage
    again (e.g. after FP8 conversion replaced one of a fused pair).
    """
    weights = [lin.weight for lin in linears]
    first = weights[0]
    if not all(
        lin.bias is None
        and not hasattr(lin, "weight_scale_inv")
        and w.dtype in _PLAIN_DTYPES
        and w.dtype == first.dtype
        and w.device == first.device
        and w.dim() == 2
        and w.shape[1] == first.shape[1]
        for lin, w in zip(linears, weights)
    ):
        for w in weights:
            if w.untyped_storage().nbytes() > w.numel() * w.element_size():  # a view of a fused storage
                w.data = w.data.clone()
        return None
    merged = torch.cat([w.detach() for w in weights])  # [sum out, in]
    start = 0
    for w in weights:
        w.data = merged[start : start + w.shape[0]]  # same Parameter, now a view of its rows
        start += w.shape[0]
    return merged


def weights_fused(merged: torch.Tensor, linears: Sequence[ReplicatedLinear]) -> bool:
    """Whether every linear's weight is still its block of rows of `merged` (nothing replaced or
    moved a weight since `fuse_weights`). Host-side pointer checks only: no sync."""
    offset = merged.data_ptr()
    for lin in linears:
        w = lin.weight
        if w.data_ptr() != offset or w.dtype != merged.dtype or lin.bias is not None:
            return False
        offset += w.numel() * w.element_size()
    return offset == merged.data_ptr() + merged.numel() * merged.element_size()
