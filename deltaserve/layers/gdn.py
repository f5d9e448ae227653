"""Gated DeltaNet mixer (Qwen3-Next / Qwen3.5 `linear_attn`).

Projections are stored de-interleaved so that one GEMM yields contiguous `[q | k | v | z]` and
`[b | a]` column blocks: the conv reads `[q | k | v]` as one slice, no runtime reshuffle. When both
weights are plain floats of one dtype, `in_proj_qkvz.weight` and `in_proj_ba.weight` are views of
one `[conv_dim + Hv*Dv + 2*Hv, H]` storage and the forward runs one GEMM for both (`fuse_projections`;
FP8 checkpoints, which keep `in_proj_ba` in bf16, run two).
- Qwen3-Next checkpoints hold `in_proj_qkvz` / `in_proj_ba` interleaved per key-head group
  (`[q_g, k_g, v_g, z_g]` and `[b_g, a_g]` for each group g); the weight loaders permute rows.
- Qwen3.5 checkpoints hold `in_proj_qkv`, `in_proj_z`, `in_proj_b`, `in_proj_a`: shards.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deltaserve.context import ForwardBatch
from deltaserve.layers.linear import (
    MergedColumnParallelLinear,
    RowParallelLinear,
    fuse_weights,
    weights_fused,
)
from deltaserve.layers.norm import GatedRMSNorm
from deltaserve.layers.weights import WeightShapeError, check_shape, make_param
from deltaserve.ops import gemv


def _interleaved_loader(group_splits: list[int], num_groups: int, shard_loader):
    """Loader accepting the whole interleaved-per-group tensor (shard None) or named shards.

    The interleaved tensor is `[num_groups, sum(group_splits), in]`; part j of every group is
    gathered into the j-th contiguous block of the parameter's rows.
    """

    def load(param: nn.Parameter, loaded: torch.Tensor, shard_id: Any = None) -> None:
        if shard_id is not None:
            shard_loader(param, loaded, shard_id)
            return
        check_shape(param.shape, loaded, "interleaved projection")
        grouped = loaded.view(num_groups, sum(group_splits), -1)  # [G, parts, in]
        parts = torch.split(grouped, group_splits, dim=1)
        param.data.copy_(torch.cat([p.reshape(-1, loaded.shape[-1]) for p in parts], dim=0))

    return load


class GatedDeltaNet(nn.Module):
    """`out_proj(gated_norm(delta_rule(conv([q|k|v])), z))` with state in the backend's pools."""

    def __init__(
        self,
        layer_id: int,
        hidden_size: int,
        num_k_heads: int,
        num_v_heads: int,
        head_k_dim: int,
        head_v_dim: int,
        conv_kernel: int,
        rms_norm_eps: float,
        *,
        interleaved_checkpoint: bool,
        dtype: torch.dtype,
        device=None,
    ) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.num_k_heads, self.num_v_heads = num_k_heads, num_v_heads
        self.head_k_dim, self.head_v_dim = head_k_dim, head_v_dim
        self.key_dim, self.value_dim = num_k_heads * head_k_dim, num_v_heads * head_v_dim
        self.conv_dim = 2 * self.key_dim + self.value_dim
        self.conv_kernel = conv_kernel

        self.in_proj_qkvz = MergedColumnParallelLinear(
            hidden_size, {"qkv": self.conv_dim, "z": self.value_dim}, dtype=dtype, device=device
        )
        self.in_proj_ba = MergedColumnParallelLinear(
            hidden_size, {"b": num_v_heads, "a": num_v_heads}, dtype=dtype, device=device
        )
        if interleaved_checkpoint:
            r = num_v_heads // num_k_heads
            qkvz = self.in_proj_qkvz.weight
            qkvz.weight_loader = _interleaved_loader(  # type: ignore[attr-defined]
                [head_k_dim, head_k_dim, r * head_v_dim, r * head_v_dim], num_k_heads, qkvz.weight_loader
            )
            ba = self.in_proj_ba.weight
            ba.weight_loader = _interleaved_loader([r, r], num_k_heads, ba.weight_loader)  # type: ignore[attr-defined]
        self.conv1d = _Conv1dWeight(self.conv_dim, conv_kernel, dtype=dtype, device=device)
        self.A_log = make_param((num_v_heads,), torch.float32, device)
        self.dt_bias = make_param((num_v_heads,), torch.float32, device)
        self.norm = GatedRMSNorm(head_v_dim, rms_norm_eps, dtype=dtype, device=device)
        self.out_proj = RowParallelLinear(self.value_dim, hidden_size, dtype=dtype, device=device)
        # [conv_dim, Hv*Dv, Hv, Hv]: the fused GEMM's output blocks (qkv, z, b, a)
        self._in_proj_splits = [
            *self.in_proj_qkvz.shard_sizes.values(),
            *self.in_proj_ba.shard_sizes.values(),
        ]
        self._in_proj_weight: torch.Tensor | None = None
        self.fuse_projections()

    def fuse_projections(self) -> None:
        """Make `in_proj_qkvz.weight` and `in_proj_ba.weight` views of one storage when one GEMM can
        serve both, else give each its own storage. Call again after replacing either weight (the
        model does after FP8 conversion); a forward that finds them no longer fused runs two GEMMs."""
        pair = (self.in_proj_qkvz, self.in_proj_ba)
        if self._in_proj_weight is not None and weights_fused(self._in_proj_weight, pair):
            return
        self._in_proj_weight = fuse_weights(pair)

    def _apply(self, fn, recurse=True):
        # `.to()` / `.cuda()` give each parameter its own new storage: fuse the pair again after it.
        module = super()._apply(fn, recurse)
        self.fuse_projections()
        return module

    def _in_proj(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`(mixed_qkv [T, conv_dim], z [T, Hv*Dv], b [T, Hv], a [T, Hv])`, column views of one GEMM
        output when the weights are fused."""
        w = self._in_proj_weight
        if w is not None and weights_fused(w, (self.in_proj_qkvz, self.in_proj_ba)):
            return torch.split(gemv.linear(x, w), self._in_proj_splits, dim=-1)
        mixed_qkv, z = self.in_proj_qkvz.split(self.in_proj_qkvz(x))  # [T, conv_dim], [T, Hv*Dv]
        b, a = self.in_proj_ba.split(self.in_proj_ba(x))  # [T, Hv] each
        return mixed_qkv, z, b, a

    def forward(self, x: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:  # [T, H] -> [T, H]
        t = x.shape[0]
        mixed_qkv, z, b, a = self._in_proj(x)  # [T, conv_dim], [T, Hv*Dv], [T, Hv], [T, Hv]
        backend = batch.gdn_backend
        mixed_qkv = backend.causal_conv(self.layer_id, mixed_qkv, self.conv1d.weight, None, batch)
        q, k, v = torch.split(mixed_qkv, [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = q.view(t, self.num_k_heads, self.head_k_dim)  # [T, Hk, Dk]
        k = k.view(t, self.num_k_heads, self.head_k_dim)  # [T, Hk, Dk]
        v = v.view(t, self.num_v_heads, self.head_v_dim)  # [T, Hv, Dv]
        o = backend.gated_delta_rule(
            self.layer_id, q, k, v, a, b, self.A_log, self.dt_bias, batch
        )  # [T, Hv, Dv]
        o = self.norm(o, z.view(t, self.num_v_heads, self.head_v_dim))  # [T, Hv, Dv]
        return self.out_proj(o.reshape(t, self.value_dim))


class _Conv1dWeight(nn.Module):
    """Holds the depthwise conv kernel as `weight [conv_dim, W]`; accepts HF's `[conv_dim, 1, W]`."""

    def __init__(self, channels: int, width: int, *, dtype: torch.dtype, device=None) -> None:
        super().__init__()
        self.weight = make_param((channels, width), dtype, device, weight_loader=self._load)

    @staticmethod
    def _load(param: nn.Parameter, loaded: torch.Tensor, shard_id: Any = None) -> None:
        if shard_id is not None:
            raise WeightShapeError(f"conv1d weight has no shard {shard_id!r}")
        if loaded.dim() == 3 and loaded.shape[1] == 1:
            loaded = loaded[:, 0, :]
        check_shape(param.shape, loaded, "conv1d weight (as [channels, width])")
        param.data.copy_(loaded)
