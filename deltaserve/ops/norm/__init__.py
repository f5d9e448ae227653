"""RMSNorm ops (zero-centred RMSNorm, fused residual add + RMSNorm, gated RMSNorm, fp8 output).

- ``rms_norm(x [..., H], weight [H], eps, *, zero_centered=True) -> [..., H]``
- ``add_rms_norm(x, residual, weight, eps, *, zero_centered=True) -> (out, new_residual)``
- ``gated_rms_norm(x [..., D], z [..., D], weight [D], eps) -> [..., D]``
- ``rms_norm_fp8(x [..., H], weight, eps, *, zero_centered) -> (x_q [..., H] e4m3, x_scale [..., H/128])``
- ``add_rms_norm_fp8(x, residual, weight, eps, *, zero_centered) -> (x_q, x_scale, new_residual)``

The fp8 variants (``H`` a multiple of 128) emit the block-FP8 GEMM's pre-quantised activations:
``block_fp8_linear(x_q, w_q, scale_inv, row_block, x_scale=x_scale)`` for 2-D ``x``.

CUDA inputs go to the Triton kernels (``kernels.py``), anything else to the fp32 torch reference
(``reference.py``); see the reference docstrings for the math.
"""

from __future__ import annotations

import torch

from deltaserve.ops.norm import reference

__all__ = ["rms_norm", "add_rms_norm", "gated_rms_norm", "rms_norm_fp8", "add_rms_norm_fp8"]


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


def rms_norm_fp8(
    x: torch.Tensor, weight: torch.Tensor, eps: float, *, zero_centered: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rms_norm`` quantised for the FP8 GEMM: ``x [..., H]`` -> ``(x_q [..., H] e4m3, x_scale [..., H/128])``."""
    impl = _kernels() if x.is_cuda else reference
    return impl.rms_norm_fp8(x, weight, eps, zero_centered=zero_centered)


def add_rms_norm_fp8(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    zero_centered: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``add_rms_norm`` with the output quantised for the FP8 GEMM: ``-> (x_q, x_scale, new_residual)``.

    ``x_q [..., H]`` float8_e4m3fn and ``x_scale [..., H/128]`` fp32 are ``per_token_group_quant_fp8``
    (group 128) of the bf16/fp16 ``add_rms_norm`` output; ``new_residual = x + residual`` as there.
    """
    impl = _kernels() if x.is_cuda else reference
    return impl.add_rms_norm_fp8(x, residual, weight, eps, zero_centered=zero_centered)


def _kernels():
    from deltaserve.ops.norm import kernels

    return kernels
