"""Triton RMSNorm kernels: (fused add +) zero-centred RMSNorm and gated RMSNorm, optional fp8 output.

One kernel, specialised by flags. Inputs ``[..., H]`` are addressed as ``[N0, N1, H]`` through two
row strides (views of fused projections need no copy); the last dim must have stride 1. Outputs are
fresh contiguous tensors. Math in fp32 with the same roundings as ``reference.py`` (residual sum
rounded to the input dtype; gated: normalised value rounded to the input dtype before the weight).
The fp8 variants (``QUANT``) round the output to the input dtype, then quantise it per row and
128-wide group with the block-FP8 GEMM's own quant routine (``ops/fp8/kernels._quant_tile``), so
``(x_q, x_scale)`` equal ``per_token_group_quant_fp8(add_rms_norm(...)[0])`` and feed the GEMM as is.
No host sync: graph-capturable.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltaserve.ops.fp8.kernels import FP8_DTYPE, FP8_MAX, _quant_tile
from deltaserve.ops.norm.checks import check_eps, check_fp8_group, check_same, check_weight, rows_view
from deltaserve.ops.norm.reference import FP8_GROUP
from deltaserve.ops.pdl import gdc_launch_dependents, gdc_wait, pdl_launch, use_pdl

# launch config (benchmarks may override for sweeps): elements per program tile, elements per warp
CONFIG = {"tile": 2048, "warp_elems": 256, "max_warps": 16}


@triton.jit
def _norm_kernel(
    x_ptr,
    r_ptr,
    z_ptr,
    w_ptr,
    out_ptr,
    nr_ptr,
    s_ptr,
    N,
    N1,
    H,
    sx0,
    sx1,
    sr0,
    sr1,
    sz0,
    sz1,
    eps,
    ZERO_CENTERED: tl.constexpr,
    HAS_RES: tl.constexpr,
    HAS_GATE: tl.constexpr,
    ROUND_PROD: tl.constexpr,
    QUANT: tl.constexpr,
    G: tl.constexpr,
    FP8_MAX_C: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PDL: tl.constexpr,
):
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BR]
    h = tl.arange(0, BLOCK_H)  # [BH]
    r_ok = row < N
    h_ok = h < H
    m = r_ok[:, None] & h_ok[None, :]
    i0 = (row // N1).to(tl.int64)
    i1 = (row % N1).to(tl.int64)
    in_ty = x_ptr.dtype.element_ty
    w = tl.load(w_ptr + h, mask=h_ok, other=0.0).to(tl.float32)  # [BH]; constant: read before the wait
    if PDL:  # see ops/pdl.py
        gdc_wait()
    x = tl.load(x_ptr + (i0 * sx0 + i1 * sx1)[:, None] + h[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_RES:
        res = tl.load(r_ptr + (i0 * sr0 + i1 * sr1)[:, None] + h[None, :], mask=m, other=0.0)
        x = (x + res.to(tl.float32)).to(in_ty)  # the new residual, rounded as an unfused add
        tl.store(nr_ptr + row.to(tl.int64)[:, None] * H + h[None, :], x, mask=m)
        x = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / H + eps)  # [BR]
    y = x * rstd[:, None]  # [BR, BH]
    if HAS_GATE:
        y = y.to(in_ty).to(tl.float32) * w[None, :]  # HF rounds the normalised value first
        if ROUND_PROD:
            y = y.to(in_ty).to(tl.float32)
        z = tl.load(z_ptr + (i0 * sz0 + i1 * sz1)[:, None] + h[None, :], mask=m, other=0.0).to(tl.float32)
        y = y * (z * tl.sigmoid(z))
    elif ZERO_CENTERED:
        y = y * (1.0 + w[None, :])
    else:
        y = y * w[None, :]
    if PDL:
        gdc_launch_dependents()  # every input is read
    if QUANT:  # out_ptr: e4m3 [N, H]; s_ptr: fp32 [N, H // G]
        y = y.to(in_ty).to(tl.float32)  # the unfused norm's output, as the GEMM would quantise it
        q, sc = _quant_tile(tl.reshape(y, (BLOCK_R * (BLOCK_H // G), G)), FP8_MAX_C)  # [BR*NG, G], [BR*NG]
        q = tl.reshape(q, (BLOCK_R, BLOCK_H))
        sc = tl.reshape(sc, (BLOCK_R, BLOCK_H // G))
        g = tl.arange(0, BLOCK_H // G)  # [NG]; groups past H (padding of BLOCK_H) hold zeros, not stored
        kb = H // G
        s_m = r_ok[:, None] & (g < kb)[None, :]
        tl.store(s_ptr + row.to(tl.int64)[:, None] * kb + g[None, :], sc, mask=s_m)
        tl.store(out_ptr + row.to(tl.int64)[:, None] * H + h[None, :], q, mask=m)
    else:
        tl.store(out_ptr + row.to(tl.int64)[:, None] * H + h[None, :], y.to(out_ptr.dtype.element_ty), mask=m)


def _launch(x, res, z, weight, eps, zero_centered, quant=False):
    """Returns ``(out, new_res or None, scales or None)``; ``out`` is e4m3 when ``quant``."""
    h = x.shape[-1]
    xv, n0, n1 = rows_view(x, "x")
    n = n0 * n1
    out = torch.empty(x.shape, dtype=FP8_DTYPE if quant else x.dtype, device=x.device)
    new_res = torch.empty(x.shape, dtype=x.dtype, device=x.device) if res is not None else None
    scales = (
        torch.empty(*x.shape[:-1], h // FP8_GROUP, dtype=torch.float32, device=x.device) if quant else None
    )
    if n == 0 or h == 0:
        return out, new_res, scales
    rv = rows_view(res, "residual")[0] if res is not None else xv
    zv = rows_view(z, "z")[0] if z is not None else xv
    block_h = triton.next_power_of_2(h)
    block_r = max(1, min(64, CONFIG["tile"] // block_h))
    num_warps = max(1, min(CONFIG["max_warps"], block_r * block_h // CONFIG["warp_elems"]))
    pdl = use_pdl(x)
    _norm_kernel[(triton.cdiv(n, block_r),)](
        xv, rv, zv, weight, out, new_res if new_res is not None else out, scales if quant else out,
        n, n1, h, xv.stride(0), xv.stride(1), rv.stride(0), rv.stride(1), zv.stride(0), zv.stride(1),
        float(eps),
        ZERO_CENTERED=zero_centered, HAS_RES=res is not None, HAS_GATE=z is not None,
        ROUND_PROD=weight.dtype == x.dtype and x.dtype != torch.float32,
        QUANT=quant, G=FP8_GROUP, FP8_MAX_C=FP8_MAX, BLOCK_R=block_r, BLOCK_H=block_h, PDL=pdl,
        num_warps=num_warps, **pdl_launch(pdl),
    )  # fmt: skip
    return out, new_res, scales


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, *, zero_centered: bool = True
) -> torch.Tensor:
    """Triton RMSNorm; same contract as ``reference.rms_norm``."""
    check_weight(x, weight, "x")
    check_eps(eps)
    return _launch(x, None, None, weight, eps, zero_centered)[0]


def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    zero_centered: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton fused residual add + RMSNorm; same contract as ``reference.add_rms_norm``."""
    check_same(x, residual, "residual", dtype=True)
    check_weight(x, weight, "x")
    check_eps(eps)
    out, new_res, _ = _launch(x, residual, None, weight, eps, zero_centered)
    return out, new_res


def gated_rms_norm(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Triton gated RMSNorm ``rmsnorm(x) * weight * silu(z)``; same contract as the reference."""
    check_same(x, z, "z", dtype=False)
    check_weight(x, weight, "x")
    check_eps(eps)
    return _launch(x, None, z, weight, eps, False)[0]


def rms_norm_fp8(
    x: torch.Tensor, weight: torch.Tensor, eps: float, *, zero_centered: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton RMSNorm with fp8 output; same contract as ``reference.rms_norm_fp8``."""
    check_weight(x, weight, "x")
    check_eps(eps)
    check_fp8_group(x, FP8_GROUP)
    q, _, s = _launch(x, None, None, weight, eps, zero_centered, quant=True)
    return q, s


def add_rms_norm_fp8(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    zero_centered: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton fused residual add + RMSNorm with fp8 output; same contract as the reference.

    One launch: reads ``x`` and ``residual``, writes ``new_residual``, ``x_q`` (e4m3) and ``x_scale``.
    """
    check_same(x, residual, "residual", dtype=True)
    check_weight(x, weight, "x")
    check_eps(eps)
    check_fp8_group(x, FP8_GROUP)
    q, new_res, s = _launch(x, residual, None, weight, eps, zero_centered, quant=True)
    return q, s, new_res
