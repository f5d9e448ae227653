"""Gated full attention (Qwen3-Next / Qwen3.5): q/k norms, partial RoPE, GQA, sigmoid output gate."""

from __future__ import annotations

import torch
from torch import nn

from deltaserve.context import ForwardBatch
from deltaserve.layers.linear import QKVParallelLinear, RowParallelLinear
from deltaserve.layers.norm import RMSNorm
from deltaserve.ops.rope import qk_norm_rope


class GatedAttention(nn.Module):
    """`o_proj(attn(rope(q_norm(q)), rope(k_norm(k)), v) * sigmoid(gate))`.

    `q_proj` outputs `2 × heads × head_dim`: per head the query, then its output gate (HF layout).
    Checkpoint `q_proj`/`k_proj`/`v_proj` load as shards of the fused `qkv_proj`.
    """

    def __init__(
        self,
        layer_id: int,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        rms_norm_eps: float,
        *,
        output_gate: bool = True,
        bias: bool = False,
        dtype: torch.dtype,
        device=None,
    ) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.output_gate = output_gate
        self.scale = head_dim**-0.5
        q_size = num_heads * head_dim * (2 if output_gate else 1)
        self.qkv_proj = QKVParallelLinear(
            hidden_size, q_size, num_kv_heads * head_dim, bias=bias, dtype=dtype, device=device
        )
        self.o_proj = RowParallelLinear(
            num_heads * head_dim, hidden_size, bias=bias, dtype=dtype, device=device
        )
        self.q_norm = RMSNorm(head_dim, rms_norm_eps, dtype=dtype, device=device)
        self.k_norm = RMSNorm(head_dim, rms_norm_eps, dtype=dtype, device=device)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], batch: ForwardBatch
    ) -> torch.Tensor:  # [T, H] -> [T, H]
        t = x.shape[0]
        q_gate, k, v = self.qkv_proj.split(self.qkv_proj(x))
        if self.output_gate:
            q_gate = q_gate.view(t, self.num_heads, 2 * self.head_dim)  # [T, Hq, 2D]
            q, gate = q_gate[..., : self.head_dim], q_gate[..., self.head_dim :]  # [T, Hq, D] each
        else:
            q, gate = q_gate.view(t, self.num_heads, self.head_dim), None
        k = k.view(t, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        v = v.view(t, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        # per-head zero-centred q_norm / k_norm, then partial RoPE: one fused op
        cos, sin = rope
        q, k = qk_norm_rope(q, k, self.q_norm.weight, self.k_norm.weight, cos, sin, self.q_norm.eps)
        o = batch.attn_backend.attention(self.layer_id, q, k, v, gate, batch, self.scale)  # [T, Hq, D]
        return self.o_proj(o.reshape(t, self.num_heads * self.head_dim))
