"""RMSNorm ops (zero-centred RMSNorm, fused residual add + RMSNorm, gated RMSNorm).

- ``rms_norm(x [..., H], weight [H], eps, *, zero_centered=True) -> [..., H]``
- ``add_rms_norm(x, residual, weight, eps, *, zero_centered=True) -> (out, new_residual)``
- ``gated_rms_norm(x [..., D], z [..., D], weight [D], eps) -> [..., D]``

CUDA inputs go to the Triton kernels (``kernels.py``), anything else to the fp32 torch reference
(``reference.py``); see the reference docstrings for the math.
"""

from __future__ import annotations

import torch

from deltaserve.ops.norm import reference

__all__ = ["rms_norm", "add_rms_norm", "gated_rms_norm"]


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, *, zero_centered: bool = True
) -> torch.Tensor:
    """RMSNorm over the last dim: ``x [..., H] -> [..., H]`` (``* (1 + w)`` when zero-centred)."""
    impl = _kernels() if x.is_cuda else reference
    return impl.rms_norm(x, weight, eps, zero_centered=zero_centered)


def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    zero_centered: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``new_residual = x + residual``; returns ``(rms_norm(new_residual), new_residual)``."""
    impl = _kernels() if x.is_cuda else reference
    return impl.add_rms_norm(x, residual, weight, eps, zero_centered=zero_centered)


def gated_rms_norm(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gated RMSNorm ``rmsnorm(x) * weight * silu(z)`` over the last dim: ``[..., D] -> [..., D]``."""
    impl = _kernels() if x.is_cuda else reference
    return impl.gated_rms_norm(x, z, weight, eps)


def _kernels():
    from deltaserve.ops.norm import kernels

    return kernels
