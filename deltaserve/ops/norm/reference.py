"""Plain-torch reference RMSNorms (fp32 math), matching HF Qwen3-Next / Qwen3.5.

- ``rms_norm``: ``x * rsqrt(mean(x^2) + eps) * (1 + w)`` (zero-centred, ``Qwen3NextRMSNorm``) or ``* w``.
- ``add_rms_norm``: residual add then ``rms_norm``; returns both.
- ``gated_rms_norm``: ``Qwen3NextRMSNormGated``: ``rmsnorm(x) * w * silu(z)`` (no zero-centring).
"""

from __future__ import annotations

import torch

from deltaserve.ops.norm.checks import check_eps, check_same, check_weight

__all__ = ["rms_norm", "add_rms_norm", "gated_rms_norm"]


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, *, zero_centered: bool = True
) -> torch.Tensor:
    """RMSNorm over the last dim, computed in fp32.

    Args:
        x: ``[..., H]``.
        weight: ``[H]``; multiplied as ``(1 + weight)`` when ``zero_centered`` else ``weight``.
        eps: added to the mean square.
    Returns:
        ``[..., H]`` in ``x.dtype``.
    """
    check_weight(x, weight)
    check_eps(eps)
    xf = x.float()  # [..., H]
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)  # [..., H]
    w = weight.float()
    scale = 1.0 + w if zero_centered else w
    return (normed * scale).to(x.dtype)


def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    zero_centered: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused residual add + RMSNorm.

    Args:
        x: ``[..., H]`` (layer output).
        residual: ``[..., H]``, same shape and dtype as ``x``.
        weight: ``[H]``.
    Returns:
        ``(out, new_residual)``: ``new_residual = x + residual`` (rounded to ``x.dtype``, as an
        unfused ``x + residual`` would be) and ``out = rms_norm(new_residual)``.
    """
    check_same(x, residual, "residual", dtype=True)
    new_residual = (x.float() + residual.float()).to(x.dtype)  # [..., H]
    return rms_norm(new_residual, weight, eps, zero_centered=zero_centered), new_residual


def gated_rms_norm(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gated RMSNorm (``Qwen3NextRMSNormGated``): ``rmsnorm(x) * weight * silu(z)``.

    Args:
        x: ``[..., D]`` (the GDN core output, one row per value head).
        z: ``[..., D]``, same shape as ``x`` (the output gate).
        weight: ``[D]`` (plain scale, not zero-centred).
    Returns:
        ``[..., D]`` in ``x.dtype``. As in HF, the normalised ``x`` is rounded to ``x.dtype`` before
        the weight multiply (a no-op for fp32 inputs).
    """
    check_weight(x, weight)
    check_eps(eps)
    check_same(x, z, "z", dtype=False)
    xf = x.float()  # [..., D]
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)  # [..., D]
    out = weight * normed  # [..., D] in the promoted dtype of weight and x, as HF
    out = out.float() * torch.nn.functional.silu(z.float())  # [..., D] fp32
    return out.to(x.dtype)
