"""Triton kernels: neox partial RoPE, and per-head q/k RMSNorm + partial RoPE fused with the
paged KV-cache write, in one launch.

Grid ``(T, q head blocks + k head blocks)``. Each program loads a ``[heads, D]`` tile and the
rotation partners (``i +- rd/2``) of the first ``rd`` dims, normalises per head in fp32 (rounded to
the input dtype, as the unfused norm then rotary would be), rotates with the given cos/sin
``[T, rd]`` (mRoPE is resolved when the table is built) and stores. K programs also write the
rotated K and V into ``[num_blocks, block_size, Hkv, D]`` caches at ``slot_mapping[t]`` (``< 0``
skipped). Inputs need unit stride on the head dim only. No host sync: graph-capturable.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltaserve.ops.pdl import gdc_wait, pdl_launch, use_pdl
from deltaserve.ops.rope.checks import (
    check_cache,
    check_cos_sin,
    check_device,
    check_heads,
    check_last_contiguous,
)


@triton.jit
def _norm_rope_tile(
    in_ptr, s_t, s_h, t, heads, h_ok, w_ptr, cos_ptr, sin_ptr, s_ct, s_st, D, eps,
    HAS_NORM: tl.constexpr, ZERO_CENTERED: tl.constexpr, RD: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Returns the normalised + rotated ``[BH, BD]`` fp32 tile of token ``t`` for ``heads``."""
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    rot = d < RD
    partner = tl.where(d < RD // 2, d + RD // 2, d - RD // 2)
    m = h_ok[:, None] & d_ok[None, :]
    mp = h_ok[:, None] & rot[None, :]
    row = in_ptr + t.to(tl.int64) * s_t + heads[:, None].to(tl.int64) * s_h
    x = tl.load(row + d[None, :], mask=m, other=0.0).to(tl.float32)  # [BH, BD]
    xp = tl.load(row + partner[None, :], mask=mp, other=0.0).to(tl.float32)  # [BH, BD]
    if HAS_NORM:
        in_ty = in_ptr.dtype.element_ty
        rstd = tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)[:, None]  # [BH, 1]
        w = tl.load(w_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
        wp = tl.load(w_ptr + partner, mask=rot, other=0.0).to(tl.float32)
        if ZERO_CENTERED:
            w = 1.0 + w
            wp = 1.0 + wp
        x = (x * rstd * w[None, :]).to(in_ty).to(tl.float32)
        xp = (xp * rstd * wp[None, :]).to(in_ty).to(tl.float32)
    c = tl.load(cos_ptr + t.to(tl.int64) * s_ct + d, mask=rot, other=1.0).to(tl.float32)  # [BD]
    s = tl.load(sin_ptr + t.to(tl.int64) * s_st + d, mask=rot, other=0.0).to(tl.float32)
    s = tl.where(d < RD // 2, -s, s)
    return tl.where(rot[None, :], x * c[None, :] + xp * s[None, :], x)


@triton.jit
def _qk_norm_rope_kernel(
    q_ptr, k_ptr, v_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr, kc_ptr, vc_ptr, slot_ptr,
    HQ, HK, D, eps,
    sq_t, sq_h, sk_t, sk_h, sv_t, sv_h, s_ct, s_st,
    skc_b, skc_o, skc_h, svc_b, svc_o, svc_h, BS,
    NQB,
    HAS_NORM: tl.constexpr, ZERO_CENTERED: tl.constexpr, HAS_CACHE: tl.constexpr, RD: tl.constexpr,
    BH_Q: tl.constexpr, BH_K: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    if PDL:  # ops/pdl.py: nothing is read or written before the previous kernel completes
        gdc_wait()
    t = tl.program_id(0)
    j = tl.program_id(1)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    # Triton needs same-typed values for names bound in both branches: distinct names per branch
    if j < NQB:
        hq_idx = j * BH_Q + tl.arange(0, BH_Q)
        hq_ok = hq_idx < HQ
        yq = _norm_rope_tile(
            q_ptr, sq_t, sq_h, t, hq_idx, hq_ok, qw_ptr, cos_ptr, sin_ptr, s_ct, s_st, D, eps,
            HAS_NORM, ZERO_CENTERED, RD, BLOCK_D,
        )  # fmt: skip
        oq = qo_ptr + (t.to(tl.int64) * HQ + hq_idx[:, None]) * D + d[None, :]
        tl.store(oq, yq.to(qo_ptr.dtype.element_ty), mask=hq_ok[:, None] & d_ok[None, :])
    else:
        hk_idx = (j - NQB) * BH_K + tl.arange(0, BH_K)
        hk_ok = hk_idx < HK
        mk = hk_ok[:, None] & d_ok[None, :]
        yk = _norm_rope_tile(
            k_ptr, sk_t, sk_h, t, hk_idx, hk_ok, kw_ptr, cos_ptr, sin_ptr, s_ct, s_st, D, eps,
            HAS_NORM, ZERO_CENTERED, RD, BLOCK_D,
        )  # fmt: skip
        ok_ = ko_ptr + (t.to(tl.int64) * HK + hk_idx[:, None]) * D + d[None, :]
        tl.store(ok_, yk.to(ko_ptr.dtype.element_ty), mask=mk)
        if HAS_CACHE:
            slot = tl.load(slot_ptr + t).to(tl.int64)
            blk = slot // BS
            off = slot % BS
            cm = mk & ((hk_idx[:, None] * 0 + slot) >= 0)  # slot < 0: padding, skipped
            hk64 = hk_idx[:, None].to(tl.int64)
            kc = kc_ptr + blk * skc_b + off * skc_o + hk64 * skc_h + d[None, :]
            tl.store(kc, yk.to(kc_ptr.dtype.element_ty), mask=cm)
            vv = tl.load(v_ptr + t.to(tl.int64) * sv_t + hk64 * sv_h + d[None, :], mask=cm)
            vc = vc_ptr + blk * svc_b + off * svc_o + hk64 * svc_h + d[None, :]
            tl.store(vc, vv.to(vc_ptr.dtype.element_ty), mask=cm)


# launch config (benchmarks may override for sweeps): elements per program tile, warps
CONFIG = {"tile": 512, "num_warps": 1}


def _head_block(h: int, block_d: int) -> int:
    return max(1, min(triton.next_power_of_2(h), CONFIG["tile"] // block_d))


def _launch(
    q, k, q_weight, k_weight, cos, sin, eps, zero_centered, v, k_cache, v_cache, slot_mapping, has_norm
):
    t, hq, d = q.shape
    hk = k.shape[1] if k is not None else 0
    rd = cos.shape[1]
    q_out = torch.empty((t, hq, d), dtype=q.dtype, device=q.device)
    k_out = torch.empty((t, hk, d), dtype=k.dtype, device=k.device) if k is not None else None
    if t == 0 or d == 0:
        return q_out, k_out
    block_d = triton.next_power_of_2(d)
    bh_q = _head_block(hq, block_d)
    bh_k = _head_block(max(hk, 1), block_d)
    nqb = triton.cdiv(hq, bh_q)
    nkb = triton.cdiv(hk, bh_k) if k is not None else 0
    has_cache = k_cache is not None
    kk = k if k is not None else q
    vv = v if v is not None else kk
    kc = k_cache if has_cache else q_out
    vc = v_cache if has_cache else q_out
    kc_s = k_cache.stride()[:3] if has_cache else (0, 0, 0)
    vc_s = v_cache.stride()[:3] if has_cache else (0, 0, 0)
    pdl = use_pdl(q)
    _qk_norm_rope_kernel[(t, nqb + nkb)](
        q, kk, vv, q_weight if has_norm else q, k_weight if has_norm else q, cos, sin, q_out,
        k_out if k_out is not None else q_out, kc, vc, slot_mapping if has_cache else cos,
        hq, hk, d, float(eps),
        q.stride(0), q.stride(1), kk.stride(0), kk.stride(1), vv.stride(0), vv.stride(1),
        cos.stride(0), sin.stride(0), *kc_s, *vc_s, k_cache.shape[1] if has_cache else 1,
        nqb,
        HAS_NORM=has_norm, ZERO_CENTERED=zero_centered, HAS_CACHE=has_cache, RD=rd,
        BH_Q=bh_q, BH_K=bh_k, BLOCK_D=block_d, PDL=pdl, num_warps=CONFIG["num_warps"], **pdl_launch(pdl),
    )  # fmt: skip
    return q_out, k_out


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Triton neox partial RoPE; same contract as ``reference.apply_rotary``."""
    check_heads("x", x)
    check_cos_sin(cos, sin, x.shape[0], x.shape[2])
    check_last_contiguous(x=x, cos=cos, sin=sin)
    check_device(x.device, cos=cos, sin=sin)
    return _launch(x, None, None, None, cos, sin, 0.0, False, None, None, None, None, False)[0]


def qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float,
    *,
    zero_centered: bool = True,
    v: torch.Tensor | None = None,
    k_cache: torch.Tensor | None = None,
    v_cache: torch.Tensor | None = None,
    slot_mapping: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton fused q/k norm + partial RoPE (+ KV-cache write); same contract as the reference."""
    check_heads("q", q)
    check_heads("k", k, q.shape[0], q.shape[2])
    d = q.shape[2]
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w.dim() != 1 or w.shape[0] != d:
            raise ValueError(f"{name} must be [D={d}], got {tuple(w.shape)}")
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    check_cos_sin(cos, sin, q.shape[0], d)
    check_cache(k, v, k_cache, v_cache, slot_mapping)
    check_last_contiguous(q=q, k=k, v=v, cos=cos, sin=sin, k_cache=k_cache, v_cache=v_cache)
    check_device(
        q.device, k=k, q_weight=q_weight, k_weight=k_weight, cos=cos, sin=sin, v=v,
        k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping,
    )  # fmt: skip
    return _launch(
        q, k, q_weight, k_weight, cos, sin, eps, zero_centered, v, k_cache, v_cache, slot_mapping, True
    )
