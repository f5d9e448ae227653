"""Plain-torch reference RMSNorms (fp32 math), matching HF Qwen3-Next / Qwen3.5.

- ``rms_norm``: ``x * rsqrt(mean(x^2) + eps) * (1 + w)`` (zero-centred, ``Qwen3NextRMSNorm``) or ``* w``.
- ``add_rms_norm``: residual add then ``rms_norm``; returns both.
- ``gated_rms_norm``: ``Qwen3NextRMSNormGated``: ``rmsnorm(x) * w * silu(z)`` (no zero-centring).
- ``rms_norm_fp8`` / ``add_rms_norm_fp8``: the same norms with the output (rounded to ``x.dtype``
  first) quantised as the block-FP8 GEMM's activations: e4m3 with per-token 128-wide group scales.
"""

from __future__ import annotations

import torch

from deltaserve.ops.fp8.reference import per_token_group_quant_fp8
from deltaserve.ops.norm.checks import check_eps, check_fp8_group, check_same, check_weight

__all__ = ["rms_norm", "add_rms_norm", "gated_rms_norm", "rms_norm_fp8", "add_rms_norm_fp8", "FP8_GROUP"]

FP8_GROUP = 128  # activation quant group along H: the block-FP8 GEMM's ``block_k``


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


def _quant_rows(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``out [..., H]`` -> ``(q [..., H] e4m3, scales [..., H/128] fp32)`` by the fp8 op's reference."""
    h = out.shape[-1]
    q, s = per_token_group_quant_fp8(out.reshape(-1, h), FP8_GROUP)  # [N, H], [N, H/128]
    return q.view(out.shape), s.view(*out.shape[:-1], h // FP8_GROUP)


def rms_norm_fp8(
    x: torch.Tensor, weight: torch.Tensor, eps: float, *, zero_centered: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rms_norm`` with fp8 output for the block-FP8 GEMM.

    Args:
        x: ``[..., H]`` with ``H`` a multiple of 128.
        weight: ``[H]``.
    Returns:
        ``(x_q [..., H] float8_e4m3fn, x_scale [..., H/128] fp32)``: ``per_token_group_quant_fp8``
        (group 128) of ``rms_norm(x)`` (which is rounded to ``x.dtype``); ``x_q * x_scale`` per group
        approximates the normalised output. 2-D ``x`` gives the GEMM's ``(x, x_scale)`` directly.
    """
    check_weight(x, weight)
    check_fp8_group(x, FP8_GROUP)
    return _quant_rows(rms_norm(x, weight, eps, zero_centered=zero_centered))


def add_rms_norm_fp8(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    zero_centered: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``add_rms_norm`` with fp8 output for the block-FP8 GEMM.

    Args:
        x: ``[..., H]`` with ``H`` a multiple of 128.
        residual: ``[..., H]``, same shape and dtype as ``x``.
        weight: ``[H]``.
    Returns:
        ``(x_q [..., H] float8_e4m3fn, x_scale [..., H/128] fp32, new_residual [..., H])``: as
        ``add_rms_norm``, then the output quantised as in ``rms_norm_fp8``.
    """
    check_same(x, residual, "residual", dtype=True)
    check_weight(x, weight)
    check_fp8_group(x, FP8_GROUP)
    out, new_residual = add_rms_norm(x, residual, weight, eps, zero_centered=zero_centered)
    q, s = _quant_rows(out)
    return q, s, new_residual
