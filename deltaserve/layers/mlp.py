"""Dense SwiGLU MLP: `down(silu(gate(x)) * up(x))` with gate and up fused into one GEMM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deltaserve.layers.linear import MergedColumnParallelLinear, RowParallelLinear


class SwiGLUMLP(nn.Module):
    """Checkpoint names `gate_proj`, `up_proj` load as shards of `gate_up_proj`; `down_proj` as is."""

    def __init__(self, hidden_size: int, intermediate_size: int, *, dtype: torch.dtype, device=None) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            hidden_size, {"gate": intermediate_size, "up": intermediate_size}, dtype=dtype, device=device
        )
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, H] -> [T, H]
        gate, up = self.gate_up_proj.split(self.gate_up_proj(x))  # [T, I] each
        return self.down_proj(F.silu(gate) * up)
