"""Linear layers (vLLM-style names) whose parameters carry weight loaders.

Tensor parallelism is not implemented yet: every class here holds the full weight. The names mirror
vLLM's so that the TP split (column: output rows; row: input columns) slots in without renames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deltaserve.layers.weights import make_param, row_shard_loader, shard_offsets
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
                self.weight_row_block,
                self.bias,
                block_k=self.fp8_block_k,
            )
        return F.linear(x, self.weight, self.bias)


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
