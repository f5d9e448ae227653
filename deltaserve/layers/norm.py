"""Norm modules: zero-centred RMSNorm (optionally fused with the residual add) and gated RMSNorm."""

from __future__ import annotations

import torch
from torch import nn

from deltaserve.layers.weights import make_param
from deltaserve.ops.norm import add_rms_norm, gated_rms_norm, rms_norm


class RMSNorm(nn.Module):
    """Zero-centred RMSNorm `x * rsqrt(mean(x²)+eps) * (1 + w)` in fp32 (weights stored near 0)."""

    def __init__(
        self, hidden_size: int, eps: float, *, dtype: torch.dtype = torch.float32, device=None
    ) -> None:
        super().__init__()
        self.eps = eps
        self.weight = make_param((hidden_size,), dtype, device)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """`norm(x)`; with `residual`, returns `(norm(x + residual), x + residual)`."""
        if residual is None:
            return rms_norm(x, self.weight, self.eps)
        return add_rms_norm(x, residual, self.weight, self.eps)


class GatedRMSNorm(nn.Module):
    """Plain-weight gated RMSNorm `rmsnorm(x) * w * silu(z)` over the last dim (per GDN value head)."""

    def __init__(self, dim: int, eps: float, *, dtype: torch.dtype = torch.float32, device=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = make_param((dim,), dtype, device)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # [..., D], [..., D] -> [..., D]
        return gated_rms_norm(x, z, self.weight, self.eps)
