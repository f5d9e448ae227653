"""Triton kernels: paged gated causal attention (prefill + split-K decode) and the KV-cache write.

One forward kernel serves prefill and decode. A program owns ``BLOCK_Q`` query tokens of one
sequence times all ``G = Hq // Hkv`` query heads of one kv head (rows ``r = token * G_PAD + head``),
so every K/V tile is read once per kv head. The KV range of the program's causal window may be cut
into ``num_splits`` fixed chunks (flash-decoding); the chunks then write unnormalised partials
(``acc``, running max ``m``, running sum ``l``) that ``_combine_kernel`` merges and gates.

Graph safety: nothing here syncs with the host when the caller passes ``max_seqlen_q`` and
``max_seqlen_k`` (Python ints, upper bounds are fine); the grid depends only on them and on shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from deltaserve.ops.attention.reference import check_paged_attention, check_write_kv_cache
from deltaserve.ops.device import num_sms
from deltaserve.ops.pdl import gdc_wait, pdl_launch, use_pdl

__all__ = ["AttnConfig", "paged_attention", "pick_config", "write_kv_cache"]

_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class AttnConfig:
    """Launch parameters: ``block_q`` query tokens per program (rows = block_q * G_PAD), ``block_n``
    keys per inner step, ``num_splits`` KV chunks per program window (1 = no split-K)."""

    block_q: int
    block_n: int
    num_splits: int
    num_warps: int
    num_stages: int


@triton.jit
def _attn_range(
    q,
    acc,
    m_i,
    l_i,
    k_base,
    v_base,
    bt_row,
    lo,
    hi,
    qpos,
    offs_d,
    d_ok,
    qk_scale,
    stride_kb,
    stride_ks,
    stride_kd,
    stride_vb,
    stride_vs,
    stride_vd,
    PAGE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Online-softmax accumulation over key positions ``[lo, hi)``; ``MASK`` applies the causal and
    range masks (off only when every key of every block is visible to every valid row)."""
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)  # [N]
        n_ok = n < hi
        off = (n % PAGE).to(tl.int64)
        if PAGE % BLOCK_N == 0:  # `start` is a multiple of BLOCK_N: the block lies in one page
            page = tl.load(bt_row + start // PAGE).to(tl.int64)
            k_row = page * stride_kb + off * stride_ks  # [N]
            v_row = page * stride_vb + off * stride_vs
        else:  # one page-table lookup per key
            pages = tl.load(bt_row + n // PAGE, mask=n_ok, other=0).to(tl.int64)  # [N]
            k_row = pages * stride_kb + off * stride_ks
            v_row = pages * stride_vb + off * stride_vs
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + k_row[:, None] + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)  # [N, D]
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=PRECISION) * qk_scale  # [R, N] log2 units
        if MASK:
            s = tl.where((n[None, :] <= qpos[:, None]) & n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # [R]
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no visible key yet
        alpha = tl.exp2(m_i - m_safe)  # [R]
        p = tl.exp2(s - m_safe[:, None])  # [R, N]
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + v_row[:, None] + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        v = v.to(q.dtype)  # [N, D]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _attn_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    gate_ptr,
    out_ptr,
    part_acc_ptr,
    part_m_ptr,
    part_l_ptr,
    bt_ptr,
    cu_ptr,
    seq_lens_ptr,
    qk_scale,
    v_scale,
    n_q_tiles,
    split_tokens,
    num_heads,
    stride_qt,
    stride_qh,
    stride_qd,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_kd,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_vd,
    stride_gt,
    stride_gh,
    stride_gd,
    stride_ot,
    stride_oh,
    stride_bt,
    G: tl.constexpr,
    G_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PAGE: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    HAS_GATE: tl.constexpr,
    PRECISION: tl.constexpr,
    PDL: tl.constexpr,
):
    if PDL:  # ops/pdl.py: nothing is read or written before the previous kernel completes
        gdc_wait()
    pid = tl.program_id(0)
    hkv = tl.program_id(1)
    split = tl.program_id(2)
    b = pid // n_q_tiles
    tile = n_q_tiles - 1 - pid % n_q_tiles  # longest causal windows first
    q_start = tl.load(cu_ptr + b)
    q_len = tl.load(cu_ptr + b + 1) - q_start
    if tile * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + b)

    ROWS: tl.constexpr = BLOCK_Q * G_PAD
    r = tl.arange(0, ROWS)
    qi = tile * BLOCK_Q + r // G_PAD  # [R] query index inside the sequence
    g = r % G_PAD
    row_ok = (qi < q_len) & (g < G)
    qpos = seq_len - q_len + qi  # [R] absolute position
    tok = (q_start + qi).to(tl.int64)
    head = hkv * G + g
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    io_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(
        q_ptr + tok[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :] * stride_qd,
        mask=io_mask,
        other=0.0,
    )  # [R, D]

    # Causal window of this tile is [0, kv_end); this program takes chunk `split` of it.
    p0 = seq_len - q_len + tile * BLOCK_Q  # first query position of the tile
    kv_end = seq_len - q_len + tl.minimum(q_len, (tile + 1) * BLOCK_Q)
    lo = split * split_tokens
    hi = tl.minimum(kv_end, lo + split_tokens)
    # Keys below p0 + 1 are visible to every row: no mask for whole blocks there.
    mid = lo + (tl.maximum(tl.minimum(p0 + 1, hi) - lo, 0) // BLOCK_N) * BLOCK_N

    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, BLOCK_D], tl.float32)
    k_base = k_ptr + hkv * stride_kh
    v_base = v_ptr + hkv * stride_vh
    bt_row = bt_ptr + b.to(tl.int64) * stride_bt
    acc, m_i, l_i = _attn_range(
        q, acc, m_i, l_i, k_base, v_base, bt_row, lo, mid, qpos, offs_d, d_ok, qk_scale,
        stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
        PAGE, BLOCK_N, False, PRECISION,
    )  # fmt: skip
    acc, m_i, l_i = _attn_range(
        q, acc, m_i, l_i, k_base, v_base, bt_row, mid, hi, qpos, offs_d, d_ok, qk_scale,
        stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
        PAGE, BLOCK_N, True, PRECISION,
    )  # fmt: skip

    acc = acc * v_scale
    if NUM_SPLITS == 1:
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # [R, D]
        if HAS_GATE:
            gt = tl.load(
                gate_ptr + tok[:, None] * stride_gt + head[:, None] * stride_gh + offs_d[None, :] * stride_gd,
                mask=io_mask,
                other=0.0,
            ).to(tl.float32)
            o = o * tl.sigmoid(gt)
        tl.store(
            out_ptr + tok[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
            o.to(out_ptr.dtype.element_ty),
            mask=io_mask,
        )
    else:
        ml = (tok * num_heads + head) * NUM_SPLITS + split  # [R] into [T, Hq, S]
        tl.store(part_m_ptr + ml, m_i, mask=row_ok)
        tl.store(part_l_ptr + ml, l_i, mask=row_ok)
        tl.store(part_acc_ptr + ml[:, None] * D + offs_d[None, :], acc, mask=io_mask)


@triton.jit
def _combine_kernel(
    out_ptr,
    gate_ptr,
    part_acc_ptr,
    part_m_ptr,
    part_l_ptr,
    cu_ptr,
    max_q,
    num_heads,
    stride_gt,
    stride_gh,
    stride_gd,
    stride_ot,
    stride_oh,
    G: tl.constexpr,
    G_PAD: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    HAS_GATE: tl.constexpr,
    PDL: tl.constexpr,
):
    """Merge the split-K partials of one query token x the G heads of one kv head."""
    if PDL:  # ops/pdl.py: nothing is read or written before the previous kernel completes
        gdc_wait()
    pid = tl.program_id(0)
    hkv = tl.program_id(1)
    b = pid // max_q
    i = pid % max_q
    q_start = tl.load(cu_ptr + b)
    if i >= tl.load(cu_ptr + b + 1) - q_start:
        return
    tok = (q_start + i).to(tl.int64)
    g = tl.arange(0, G_PAD)
    g_ok = g < G
    head = hkv * G + g
    offs_d = tl.arange(0, BLOCK_D)
    mask = g_ok[:, None] & (offs_d < D)[None, :]
    base = (tok * num_heads + head) * NUM_SPLITS  # [G_PAD]
    m_max = tl.full([G_PAD], float("-inf"), tl.float32)
    for s in range(NUM_SPLITS):
        m_max = tl.maximum(m_max, tl.load(part_m_ptr + base + s, mask=g_ok, other=float("-inf")))
    m_safe = tl.where(m_max == float("-inf"), 0.0, m_max)
    l_tot = tl.zeros([G_PAD], tl.float32)
    o = tl.zeros([G_PAD, BLOCK_D], tl.float32)
    for s in range(NUM_SPLITS):
        w = tl.exp2(tl.load(part_m_ptr + base + s, mask=g_ok, other=float("-inf")) - m_safe)  # [G_PAD]
        l_tot += w * tl.load(part_l_ptr + base + s, mask=g_ok, other=0.0)
        a = tl.load(part_acc_ptr + (base + s)[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
        o += w[:, None] * a
    o = o / tl.where(l_tot > 0, l_tot, 1.0)[:, None]
    if HAS_GATE:
        gt = tl.load(
            gate_ptr + tok * stride_gt + head[:, None] * stride_gh + offs_d[None, :] * stride_gd,
            mask=mask,
            other=0.0,
        ).to(tl.float32)
        o = o * tl.sigmoid(gt)
    tl.store(
        out_ptr + tok * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
        o.to(out_ptr.dtype.element_ty),
        mask=mask,
    )


@triton.jit
def _write_kv_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    inv_k_scale,
    inv_v_scale,
    stride_kt,
    stride_kh,
    stride_kd,
    stride_vt,
    stride_vh,
    stride_vd,
    stride_ckb,
    stride_cks,
    stride_ckh,
    stride_ckd,
    stride_cvb,
    stride_cvs,
    stride_cvh,
    stride_cvd,
    H: tl.constexpr,
    D: tl.constexpr,
    H_PAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PAGE: tl.constexpr,
    PDL: tl.constexpr,
):
    if PDL:  # ops/pdl.py: nothing is read or written before the previous kernel completes
        gdc_wait()
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot < 0:
        return
    blk = slot // PAGE
    off = slot % PAGE
    h = tl.arange(0, H_PAD)
    d = tl.arange(0, BLOCK_D)
    mask = (h < H)[:, None] & (d < D)[None, :]
    k = tl.load(k_ptr + t * stride_kt + h[:, None] * stride_kh + d[None, :] * stride_kd, mask=mask)
    v = tl.load(v_ptr + t * stride_vt + h[:, None] * stride_vh + d[None, :] * stride_vd, mask=mask)
    ck = k_cache_ptr + blk * stride_ckb + off * stride_cks + h[:, None] * stride_ckh + d[None, :] * stride_ckd
    cv = v_cache_ptr + blk * stride_cvb + off * stride_cvs + h[:, None] * stride_cvh + d[None, :] * stride_cvd
    tl.store(ck, (k.to(tl.float32) * inv_k_scale).to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(cv, (v.to(tl.float32) * inv_v_scale).to(v_cache_ptr.dtype.element_ty), mask=mask)


def write_kv_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Triton version of ``reference.write_kv_cache`` (same contract; no bounds check on slots)."""
    check_write_kv_cache(k, v, k_cache, v_cache, slot_mapping)
    t = k.shape[0]
    if t == 0:
        return
    _, page, h, d = k_cache.shape
    pdl = use_pdl(k)
    _write_kv_kernel[(t,)](
        k, v, k_cache, v_cache, slot_mapping, 1.0 / k_scale, 1.0 / v_scale,
        *k.stride(), *v.stride(), *k_cache.stride(), *v_cache.stride(),
        H=h, D=d, H_PAD=triton.next_power_of_2(h), BLOCK_D=triton.next_power_of_2(d), PAGE=page, PDL=pdl,
        num_warps=4 if h * d >= 1024 else 1, **pdl_launch(pdl),
    )  # fmt: skip


def pick_config(
    *,
    batch: int,
    hkv: int,
    group: int,
    d: int,
    max_seqlen_q: int,
    max_seqlen_k: int,
    num_sms: int,
    elem_bytes: int = 2,
) -> AttnConfig:
    """Heuristic launch config (swept on H100 for d 256 with ``op_attention --sweep``; d 128 untuned).

    Decode (B=64, ctx 8k, pages 1/16/64) is within a few % for block_n 32/64, 2-8 splits, 2-3
    stages in a CUDA graph; prefill wants 128-row tiles, block_n 64, 8 warps, 2 stages."""
    g_pad = triton.next_power_of_2(group)
    if max_seqlen_q * g_pad <= 64:  # decode / speculative verify: one q tile, split-K over the context
        block_q = max(triton.next_power_of_2(max_seqlen_q), triton.cdiv(16, g_pad))
        block_n, num_warps, num_stages = 64, 4, 2
    else:  # prefill: tiles of 128 rows (query tokens x heads of one kv head)
        block_q = max(1, 128 // g_pad)
        block_n = 64
        num_warps, num_stages = (8, 3) if d <= 128 else (8, 2)
    if elem_bytes >= 4:  # fp32 inputs (tests): keep shared memory within the limit
        block_n, num_stages = 32, 1
    programs = batch * triton.cdiv(max_seqlen_q, block_q) * hkv
    min_chunk = 256
    splits = 1
    if programs < 2 * num_sms and max_seqlen_k >= 2 * min_chunk:
        splits = min(triton.cdiv(3 * num_sms, programs), max_seqlen_k // min_chunk, 64)
    return AttnConfig(block_q, block_n, max(splits, 1), num_warps, num_stages)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    gate: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    config: AttnConfig | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton version of ``reference.paged_attention`` (same contract).

    ``max_seqlen_q`` / ``max_seqlen_k``: Python-int upper bounds of the query lengths and of
    ``seq_lens``; when omitted they are read from the device (one host sync each, not graph-safe).
    ``config`` overrides the launch heuristic (benchmarks, tests). ``out`` (``[T, Hq, D]``, any
    dtype, unit stride on D) receives the result in place and its padding rows are left untouched.
    """
    check_paged_attention(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, gate)
    t, hq, d = q.shape
    _, page, hkv, _ = k_cache.shape
    batch = block_tables.shape[0]
    group = hq // hkv
    if out is None:
        # Rows past cu_seqlens_q[-1] (padding) are never visited: zero them like the reference does.
        out = torch.zeros_like(q, memory_format=torch.contiguous_format)  # [T, Hq, D]
    elif out.shape != q.shape or out.stride(2) != 1 or out.device != q.device:
        raise ValueError(f"out must be [T, Hq, D] = {tuple(q.shape)} with unit stride on D, on q's device")
    if t == 0 or batch == 0:
        return out
    if max_seqlen_q is None:
        max_seqlen_q = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max())
    if max_seqlen_k is None:
        max_seqlen_k = int(seq_lens.max())
    if max_seqlen_q <= 0 or max_seqlen_k <= 0:
        return out
    cfg = config or pick_config(
        batch=batch,
        hkv=hkv,
        group=group,
        d=d,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
        num_sms=num_sms(q.device),
        elem_bytes=q.element_size(),
    )
    g_pad = triton.next_power_of_2(group)
    n_q_tiles = triton.cdiv(max_seqlen_q, cfg.block_q)
    splits = max(1, min(cfg.num_splits, triton.cdiv(max_seqlen_k, cfg.block_n)))
    split_tokens = triton.cdiv(triton.cdiv(max_seqlen_k, splits), cfg.block_n) * cfg.block_n
    splits = triton.cdiv(max_seqlen_k, split_tokens)
    if splits > 1:
        part_acc = torch.empty((t, hq, splits, d), dtype=torch.float32, device=q.device)
        part_m = torch.empty((t, hq, splits), dtype=torch.float32, device=q.device)
        part_l = torch.empty((t, hq, splits), dtype=torch.float32, device=q.device)
    else:
        part_acc = part_m = part_l = out  # unused
    g = gate if gate is not None else q
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    pdl = use_pdl(q)
    _attn_fwd_kernel[(batch * n_q_tiles, hkv, splits)](
        q, k_cache, v_cache, g, out, part_acc, part_m, part_l,
        block_tables, cu_seqlens_q, seq_lens,
        scale * k_scale * _LOG2E, v_scale, n_q_tiles, split_tokens, hq,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), *g.stride(), out.stride(0), out.stride(1),
        block_tables.stride(0),
        G=group, G_PAD=g_pad, BLOCK_Q=cfg.block_q, BLOCK_N=cfg.block_n, D=d,
        BLOCK_D=triton.next_power_of_2(d), PAGE=page, NUM_SPLITS=splits, HAS_GATE=gate is not None,
        PRECISION=precision, PDL=pdl, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_launch(pdl),
    )  # fmt: skip
    if splits > 1:
        _combine_kernel[(batch * max_seqlen_q, hkv)](
            out, g, part_acc, part_m, part_l, cu_seqlens_q, max_seqlen_q, hq,
            *g.stride(), out.stride(0), out.stride(1),
            G=group, G_PAD=g_pad, D=d, BLOCK_D=triton.next_power_of_2(d), NUM_SPLITS=splits,
            HAS_GATE=gate is not None, PDL=pdl, num_warps=4, **pdl_launch(pdl),
        )  # fmt: skip
    return out
