"""Triton block-FP8 kernels: per-token-group activation quant and the block-FP8 GEMMs.

The GEMMs compute ``y = x Wᵀ`` with ``W [N, K]`` e4m3 and fp32 ``scale_inv [NB, KB]``; output column
``n`` reads scale row ``row_block[n]`` (any row map works: plain, shard-offset or permuted), or
``n // 128`` when ``row_block`` is None (the plain map: each 128-row N tile has one scale per K step,
a scalar, instead of a per-column gather and an outer product of scales). ``BK`` is 128 and divides
``block_k``, so one weight scale per column applies to each K step's fp32 partial product.
Activation modes (constexpr ``A_MODE``):

- 0 ``W8A16``: bf16/fp16 activations, the e4m3 tile is widened in registers (exact) and the product
  is scaled per column: the dequantised computation with fp32 accumulation. The small-M kernel's
  swap-AB form instead scales the widened tile and rounds it to the activation dtype (the weight a
  dequantised checkpoint would hold), so its MMAs accumulate in place.
- 1 ``W8A8``: activations pre-quantised by ``per_token_group_quant_fp8`` (larger M), or handed in
  already quantised (``x_scale``: e.g. a norm with fp8 output), at any M.
- 2 ``W8A8`` with the per-token-group quantisation done inline on each A tile (small M, ``block_k``
  128; the same arithmetic as the quant kernel, one launch fewer).

GEMM kernels:
- one or two rows (``CONFIG["gemv_m_max"]``), modes 0 and 1 (``CONFIG["gemv"]`` / ``["gemv_rows"]``, by
  N): the streaming GEMV in ``gemv.py``; W8A8 quantises the rows in a small kernel ahead, one row to
  e4m3 and its group scales (mode 1), two as ``fake_quant``'s quantised values in fp32 (mode 0;
  ``CONFIG["gemv_w8a8"]`` / ``["gemv_rows_w8a8"]``);
- other small M (``<= 16``), ``_fp8_small_kernel`` (``small_tile``: ``CONFIG["small"]``, ``["small_w8a8"]``
  or ``["small_w8a8_rowmap"]``, by N): a 16-row activation tile times a weight tile, either as
  mma.sync's M side with the e4m3 tile widened to fp16 in registers (``_rows_step``) or swapped, the
  weight tile as wgmma's M side read from shared memory (``_swap_ab_step``; W8A8 at wide N or through a
  row map). K is split over programs so that about two programs per SM stream the weight; the last
  split to finish a tile adds the fp32 partials in split order (one launch, deterministic). Before its
  PDL wait each program asks its first weight step into L2 (``SmallTile.prefetch``);
- large M, W8A8, plain rows, Hopper or newer: ``_fp8_gemm_tma_kernel`` (A and W tiles by TMA);
- otherwise ``_fp8_gemm_kernel`` (plain loads, any row map).
Large-M W8A16 dequantises the weight to a bf16 scratch and runs cuBLAS. No host syncs: every launch
size follows from the shapes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl

from deltaserve.ops.device import capability
from deltaserve.ops.fp8 import gemv
from deltaserve.ops.fp8.reference import PLAIN_BN, check_prequantized
from deltaserve.ops.pdl import gdc_launch_dependents, gdc_wait, pdl_launch, use_pdl
from deltaserve.ops.triton_common import INTERPRET, dot, prefetch_l2

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
BK = 128


class SmallTile(NamedTuple):
    """A launch of the small-M kernel (``_fp8_small_kernel``; its 16-row activation tile is fixed)."""

    swap: bool  # the weight tile on the MMA's M side (wgmma) or the activations (16 rows, mma.sync)
    bn: int  # weight rows per program
    warps: int
    stages: int
    target: int  # K is split until there are about this many programs
    # 0: no PDL; 1: wait at the start, the next kernel launched after the main loop; 2: both at the start
    pdl: int
    # K steps of each program's weight tile prefetched into L2 before the PDL wait (with PDL only)
    prefetch: int = 0


# (BM, BN, warps, stages) by M range ("tma_*": the TMA kernel for N >= / < tma_wide_n); benchmarks may
# override for sweeps. H100 measurements: BENCHMARKS.md (scripts/fp8_probe.py).
CONFIG = {
    # small M past the GEMV, (min N, SmallTile) tiers (the first whose min N the call reaches): W8A16, and
    # W8A8 (inline quant or pre-quantised). Activations on the MMA's 16-row side win everywhere but W8A8 at
    # wide N (H200, M = 2-16, same process: W8A16 2048x4096 8.2-8.5 -> 7.1-7.3 us, 12288x2048 13.5 ->
    # 11.7-12.5 us; W8A8 12288x2048 swap-AB with PDL 12.4 -> 11.7-12.0; scripts/fp8_small_rows.py,
    # BENCHMARKS.md 2026-11-29 ~08:20). The row form's first K step prefetched into L2 before the PDL wait:
    # 3-7 % at N = 2048 (2048x4096 W8A16 M = 3-16: 6.95-7.79 -> 6.50-7.28 us), 1-2 % at 12288x2048;
    # swap-AB W8A8 there gained nothing (2026-11-29 ~10:20, fp8_small_rows.py prefetch)
    "small": ((8192, SmallTile(False, 128, 4, 3, 264, 1, 1)), (0, SmallTile(False, 64, 4, 3, 264, 2, 1))),
    "small_w8a8": ((8192, SmallTile(True, 64, 4, 3, 264, 2)), (0, SmallTile(False, 64, 4, 3, 264, 2, 1))),
    # W8A8 through a row map: swap-AB at every N (the row form's per-column scales were 0-9 % slower; H200,
    # 2048x4096 / 2048x6144, M = 2-16; BENCHMARKS.md 2026-11-29 ~08:20, call 8)
    "small_w8a8_rowmap": ((0, SmallTile(True, 64, 4, 3, 264, 2)),),
    "medium": (64, 128, 4, 4),
    "large": (64, 128, 4, 4),
    "tma_wide": (64, 128, 4, 4),
    "tma_narrow": (128, 128, 8, 3),
    "tma_wide_n": 8192,
    "small_m_max": 16,
    "medium_m_max": 256,
    "dequant_m_min": 512,  # W8A16 from this M on: dequantise to a bf16 scratch + cuBLAS
    # the streaming GEMV (W8A16 or pre-quantised W8A8, any row map; gemv.py) up to this many rows (the
    # kernel keeps one accumulator per row, gemv.MAX_ROWS at most). Rows cost registers per program, so
    # bytes in flight per SM: past 2 rows the small-M MMA kernel wins (H200, M=4, 2048x4096: 8.5-8.9 us
    # against 7.9-8.1 for its swap-AB form, 6.9 for the row form; scripts/fp8_gemv_rows.py,
    # scripts/fp8_small_rows.py, BENCHMARKS.md 2026-11-29)
    "gemv_m_max": 2,
    # its (min N, (BN, BK, warps, stages) | None) tiers, the first whose min N the call reaches (below
    # every tier: the last); None: the small-M kernel. One bf16 row: 4 weight rows per program, 4 warps
    # for wide outputs, 8 below (H200, M=1, 12288x2048 / 2048x4096 / 2048x6144: 9.6 / 4.7 / 6.5 us;
    # scripts/fp8_gemv_probe.py gemv, BENCHMARKS.md 2026-11-29)
    "gemv": ((8192, (4, 1024, 4, 3)), (0, (4, 2048, 8, 3))),
    # W8A8 quantising the activations through the GEMV (False: the small-M kernel quantising inline; H200,
    # one row: 1.23-1.28x -> 1.46-1.72x bf16; scripts/fp8_gemv_probe.py): up to this many rows quantised
    # to e4m3 with their group scales (``per_token_group_quant_fp8``, mode 1: e4m3 rows take the GEMV's
    # chunk-major layout, as bf16 rows do), more as ``fake_quant``'s fp32 rows (mode 0, lanes along the
    # weight rows). One row as e4m3 against fp32: 12288x2048 10.8-10.9 -> 9.8 us, 2048x6144 7.3 -> 7.0,
    # 2048x4096 5.8 -> 5.8-5.9; two rows as e4m3 were 0.1-0.5 us slower on the fp32 rows' tiers (H200,
    # BENCHMARKS.md 2026-11-29 ~12:10)
    "w8a8_gemv": True,
    "w8a8_e4m3_rows_max": 1,
    # one e4m3 row (W8A8): 4-row programs over 2048-wide steps for wide outputs, 2-row below
    "gemv_w8a8": ((8192, (4, 2048, 4, 3)), (0, (2, 2048, 4, 3))),
    # two rows, bf16 / fp32 (W8A8): the GEMV below N 8192 (H200, 2048x4096 / 2048x6144: W8A16 6.0 / 8.0
    # us against 6.9 / 8.3 for the small-M kernel, W8A8 6.5 / 8.2 against 7.2 / 9.2), the small-M kernel
    # above (12288x2048: W8A16 11.6 against the GEMV's best 13.3, W8A8 11.8 against 14.9;
    # scripts/fp8_gemv_rows.py, scripts/fp8_small_rows.py)
    "gemv_rows": ((8192, None), (0, (2, 1024, 4, 3))),
    "gemv_rows_w8a8": ((8192, None), (0, (2, 1024, 4, 3))),
}


@triton.jit
def _quant_tile(a, FP8_MAX_C: tl.constexpr):
    """``a [BM, G]`` fp32 -> (``q [BM, G]`` e4m3, ``scale [BM]``); same math as the reference."""
    amax = tl.maximum(tl.max(tl.abs(a), axis=1), 1e-10)  # [BM]
    scale = amax / FP8_MAX_C
    q = a / scale[:, None]
    q = tl.minimum(tl.maximum(q, -FP8_MAX_C), FP8_MAX_C)
    return q.to(tl.float8e4nv), scale


@triton.jit
def _pow2_fp16_rows(a):
    """One K step's ``a [BM, BK]`` bf16 -> (``a · 2^e`` in fp16, ``2^-e`` ``[BM]`` fp32), ``2^e`` per row putting
    its largest magnitude in [2^14, 2^15): exact (bf16's 8 significant bits fit fp16's 11, and no row
    overflows), so an fp16 MMA on it times ``2^-e`` is the bf16 product. Only values under 2^-28 of the
    row's largest lose bits (fp16 subnormals; far under bf16's own rounding of the sum). e4m3 weights
    widen to fp16 in one instruction per pair, to bf16 in three."""
    af = a.to(tl.float32)
    amax = tl.max(tl.abs(af), axis=1)  # [BM]
    # biased exponent of the row max, floored so that 2^-e stays a normal fp32 (rows under 2^-112)
    ex = tl.maximum((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF, 15)
    s = ((268 - ex) << 23).to(tl.float32, bitcast=True)  # 2^(14 - (ex - 127))
    inv = ((ex - 14) << 23).to(tl.float32, bitcast=True)  # 1 / s
    return (af * s[:, None]).to(tl.float16), inv


@triton.jit
def _group_quant_kernel(
    x_ptr, q_ptr, s_ptr, K, KB, sx, sq, ss,
    G: tl.constexpr, GPP: tl.constexpr, FP8_MAX_C: tl.constexpr, FAKE: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Per-token-group quant of ``GPP`` groups of one row: ``q`` e4m3 and ``s`` its scales, or with
    ``FAKE`` only ``q`` as fp32, each e4m3 value times its group scale (``s_ptr`` unused)."""
    if PDL:
        gdc_wait()
        # the GEMV after this only streams weights before its own wait: let it start now
        gdc_launch_dependents()
    row = tl.program_id(0).to(tl.int64)
    grp = tl.program_id(1) * GPP + tl.arange(0, GPP)  # [GPP]
    col = grp[:, None] * G + tl.arange(0, G)[None, :]  # [GPP, G]
    m = (grp[:, None] < KB) & (col < K)
    x = tl.load(x_ptr + row * sx + col, mask=m, other=0.0).to(tl.float32)
    q, scale = _quant_tile(x, FP8_MAX_C)
    if FAKE:
        tl.store(q_ptr + row * sq + col, q.to(tl.float32) * scale[:, None], mask=m)
    else:
        tl.store(q_ptr + row * sq + col, q, mask=m)
        tl.store(s_ptr + row * ss + grp, scale, mask=grp < KB)


@triton.jit
def _scale_rows(rb_ptr, offs_n, n_ok, PLAIN: tl.constexpr, PLAIN_BN_C: tl.constexpr):
    """``[BN]`` scale row of each output column (the plain map needs no load)."""
    if PLAIN:
        rows = (offs_n // PLAIN_BN_C).to(tl.int64)
    else:
        rows = tl.load(rb_ptr + offs_n, mask=n_ok, other=0).to(tl.int64)
    return rows


@triton.jit
def _grouped_tile(pid, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """(row tile, column tile) of program `pid` in grouped order: GROUP_M row tiles walk the column
    tiles together, so each weight tile is read from L2 by GROUP_M programs in a row."""
    n_m = tl.cdiv(M, BM)
    width = GROUP_M * tl.cdiv(N, BN)
    first_m = (pid // width) * GROUP_M
    gm = tl.minimum(n_m - first_m, GROUP_M)
    return first_m + (pid % width) % gm, (pid % width) // gm


@triton.jit
def _fp8_gemm_kernel(
    a_ptr, as_ptr, b_ptr, bs_ptr, rb_ptr, bias_ptr, c_ptr,
    M, N, K, sa_m, sas_m, sb_n, sbs_r, sc_m,
    A_MODE: tl.constexpr, HAS_BIAS: tl.constexpr, PLAIN: tl.constexpr, BLOCK_K: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BKC: tl.constexpr, GROUP_M: tl.constexpr, PLAIN_BN_C: tl.constexpr,
    F32: tl.constexpr,
):  # fmt: skip
    """One [BM, BN] output tile over all of K (modes 0 and 1). With ``PLAIN`` (BN divides 128) the
    tile's weight scale is one scalar per K step."""
    pid_m, pid_n = _grouped_tile(tl.program_id(0), M, N, BM, BN, GROUP_M)
    offs_m = pid_m * BM + tl.arange(0, BM)  # [BM]
    offs_n = pid_n * BN + tl.arange(0, BN)  # [BN]
    m_ok = offs_m < M
    n_ok = offs_n < N
    offs_m64 = offs_m.to(tl.int64)
    srow = _scale_rows(rb_ptr, offs_n, n_ok, PLAIN, PLAIN_BN_C)  # [BN]
    srow0 = (pid_n * BN) // PLAIN_BN_C
    kr = tl.arange(0, BKC)
    a_rows = a_ptr + offs_m64[:, None] * sa_m  # [BM, 1]
    b_cols = b_ptr + offs_n.to(tl.int64)[None, :] * sb_n  # [1, BN]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BKC)):
        k = kb * BKC + kr  # [BK]
        k_ok = k < K
        a = tl.load(a_rows + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)  # [BM, BK]
        b = tl.load(b_cols + k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)  # [BK, BN]
        sblk = (kb * BKC) // BLOCK_K
        if A_MODE == 0:
            part = dot(a, b.to(a.dtype), F32)
        else:
            part = dot(a, b, F32)
            a_s = tl.load(as_ptr + offs_m64 * sas_m + sblk, mask=m_ok, other=0.0)  # [BM]
            part = part * a_s[:, None]
        if PLAIN:
            acc += part * tl.load(bs_ptr + srow0 * sbs_r + sblk)
        else:
            acc += part * tl.load(bs_ptr + srow * sbs_r + sblk, mask=n_ok, other=0.0)[None, :]
    _store_out(acc, bias_ptr, c_ptr, offs_m64, offs_n, n_ok, m_ok[:, None] & n_ok[None, :], sc_m, HAS_BIAS)


@triton.jit
def _fp8_gemm_tma_kernel(
    a_desc, as_ptr, b_desc, bs_ptr, bias_ptr, c_ptr, M, N, K, sas_m, sbs_r, sc_m,
    HAS_BIAS: tl.constexpr, BLOCK_K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BKC: tl.constexpr,
    GROUP_M: tl.constexpr, PLAIN_BN_C: tl.constexpr,
):  # fmt: skip
    """Large-M W8A8 with the plain row map: A [BM, BK] and W [BN, BK] e4m3 tiles by TMA (out-of-range
    rows and K read as zeros), one scalar weight scale per tile and K step (BN divides 128)."""
    pid_m, pid_n = _grouped_tile(tl.program_id(0), M, N, BM, BN, GROUP_M)
    off_m = pid_m * BM
    off_n = pid_n * BN
    offs_m = off_m + tl.arange(0, BM)  # [BM]
    offs_n = off_n + tl.arange(0, BN)  # [BN]
    m_ok = offs_m < M
    n_ok = offs_n < N
    offs_m64 = offs_m.to(tl.int64)
    srow0 = off_n // PLAIN_BN_C
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BKC)):
        a = a_desc.load([off_m, kb * BKC])  # [BM, BK]
        b = b_desc.load([off_n, kb * BKC])  # [BN, BK]
        sblk = (kb * BKC) // BLOCK_K
        a_s = tl.load(as_ptr + offs_m64 * sas_m + sblk, mask=m_ok, other=0.0)  # [BM]
        bs = tl.load(bs_ptr + srow0 * sbs_r + sblk)
        acc += tl.dot(a, tl.trans(b)) * (a_s * bs)[:, None]
    _store_out(acc, bias_ptr, c_ptr, offs_m64, offs_n, n_ok, m_ok[:, None] & n_ok[None, :], sc_m, HAS_BIAS)


@triton.jit
def _w8a8_rows(a, as_rows, sblk, m_ok, A_MODE: tl.constexpr, FP8_MAX_C: tl.constexpr):
    """One K step's W8A8 activations: (``[BMT, BK]`` e4m3, ``[BMT]`` fp32 scales), read (``A_MODE`` 1: ``a``
    pre-quantised, its scales at ``as_rows + sblk``) or quantised here (2: ``a`` bf16/fp16)."""
    if A_MODE == 1:
        aq, a_s = a, tl.load(as_rows + sblk, mask=m_ok, other=0.0)
    else:
        aq, a_s = _quant_tile(a.to(tl.float32), FP8_MAX_C)
    return aq, a_s


@triton.jit
def _swap_ab_step(acc, w, a, w_s, as_rows, sblk, m_ok, A_MODE: tl.constexpr, FP8_MAX_C: tl.constexpr,
                  F32: tl.constexpr):  # fmt: skip
    """One K step of the swap-AB tile ``acc [BN, BMT]``: ``w [BN, BK]`` e4m3 is wgmma's M side (read from
    shared memory as is for W8A8), ``a [BMT, BK]`` its N side; ``w_s`` the weight scale (scalar or ``[BN, 1]``)."""
    if A_MODE == 0:
        # the weight is dequantised in registers (w·scale rounded to the activation dtype, as a
        # dequantised checkpoint is) and the MMA accumulates into acc: with nothing to scale after
        # the product, each step's MMA runs while the next tile is converted (asynchronous wgmma;
        # H200, M=16, 12288x2048: 15.8 -> 13.3 us)
        wd = (w.to(tl.float32) * w_s).to(a.dtype)
        return dot(wd, tl.trans(a), F32, acc)
    # per-token activation scales vary with the K step: each product is scaled before it is added, so
    # the MMA is waited on every step
    aq, a_s = _w8a8_rows(a, as_rows, sblk, m_ok, A_MODE, FP8_MAX_C)
    return acc + dot(w, tl.trans(aq), F32) * a_s[None, :] * w_s


@triton.jit
def _rows_step(acc, w, a, w_s, as_rows, sblk, m_ok, A_MODE: tl.constexpr, FP8_MAX_C: tl.constexpr,
               F32: tl.constexpr):  # fmt: skip
    """One K step of the tile ``acc [BMT, BN]`` with the activations on the MMA's 16-row side: mma.sync,
    both operands in registers, the e4m3 tile read from the pipeline's shared memory straight into its
    operand layout and widened to fp16 (one conversion per pair); every step's product is scaled in
    registers. ``w_s``: the weight scale, scalar or ``[1, BN]``."""
    wt = tl.trans(w)  # [BK, BN]
    if A_MODE == 0:
        if a.dtype == tl.bfloat16:
            a16, inv = _pow2_fp16_rows(a)
            part = dot(a16, wt.to(tl.float16), F32) * inv[:, None]  # [BMT, BN]
        else:
            part = dot(a, wt.to(a.dtype), F32)
    else:
        aq, a_s = _w8a8_rows(a, as_rows, sblk, m_ok, A_MODE, FP8_MAX_C)
        part = dot(aq, wt, F32) * a_s[:, None]
    return acc + part * w_s


@triton.jit
def _step_scales(s_cols, kb, n_ok, BKC: tl.constexpr, BLOCK_K: tl.constexpr, PLAIN: tl.constexpr):
    """The weight scales of K step ``kb``: the tile's one (``PLAIN``) or each column's ``[BN]``."""
    if PLAIN:
        w_s = tl.load(s_cols + (kb * BKC) // BLOCK_K)
    else:
        w_s = tl.load(s_cols + (kb * BKC) // BLOCK_K, mask=n_ok, other=0.0)
    return w_s


@triton.jit
def _fp8_small_kernel(
    a_ptr, as_ptr, b_ptr, bs_ptr, rb_ptr, bias_ptr, c_ptr, ws_ptr, cnt_ptr,
    M, N, K, sa_m, sas_m, sb_n, sbs_r, sc_m, KB_PER_SPLIT,
    A_MODE: tl.constexpr, HAS_BIAS: tl.constexpr, PLAIN: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_K: tl.constexpr, BMT: tl.constexpr, BN: tl.constexpr, BKC: tl.constexpr,
    PLAIN_BN_C: tl.constexpr, FP8_MAX_C: tl.constexpr, F32: tl.constexpr, SWAP: tl.constexpr,
    PDL: tl.constexpr, PREFETCH: tl.constexpr,
):  # fmt: skip
    """Small M: the output tile ``[BMT, BN]`` over the K steps of split ``program_id(1)``, with the weight
    tile on the MMA's M side (``SWAP``, ``_swap_ab_step``) or the activations (``_rows_step``); splits meet
    at a per-tile arrival counter. ``PDL`` 1 or 2: wait for the previous kernel at the start, let the next
    one launch after the main loop (1) or at once (2). ``PREFETCH``: K steps of the program's weight tile
    asked into L2 before the wait (one line per weight row and step), which overlaps their DRAM latency
    with the previous kernel's tail."""
    # Only prefetch hints go before the wait: reading the first weight tile there (the GEMV's trick) needs
    # the first K step peeled, which put its activation load in front of the pipeline's prologue (H200,
    # M=16 12288x2048: 13.3 -> 14.2 us); an L2 prefetch of each program's whole weight share was slower (up
    # to 31 %) and of 2-4 steps slower than of one (BENCHMARKS.md, 2026-11-28 and 2026-11-29).
    if PREFETCH > 0:
        pf_n = tl.program_id(0) * BN + tl.arange(0, BN)  # [BN]
        pf_rows = b_ptr + tl.where(pf_n < N, pf_n, 0).to(tl.int64) * sb_n  # [BN]
        pf_kb = tl.program_id(1) * KB_PER_SPLIT
        for pf_s in tl.static_range(PREFETCH):
            prefetch_l2(pf_rows + tl.minimum(pf_kb + pf_s, tl.cdiv(K, BKC) - 1) * BKC)
    if PDL > 0:
        gdc_wait()
    if PDL == 2:
        gdc_launch_dependents()
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BN + tl.arange(0, BN)  # [BN]
    n_ok = offs_n < N
    offs_m = tl.arange(0, BMT)  # [BMT]
    m_ok = offs_m < M
    offs_m64 = offs_m.to(tl.int64)
    srow0 = (pid_n * BN) // PLAIN_BN_C  # the plain map's one scale row (BN divides PLAIN_BN_C)
    kr = tl.arange(0, BKC)
    w_rows = b_ptr + offs_n.to(tl.int64)[:, None] * sb_n  # [BN, 1]
    a_rows = a_ptr + offs_m64[:, None] * sa_m  # [BMT, 1]
    as_rows = as_ptr + offs_m64 * sas_m  # [BMT]
    kb0 = pid_k * KB_PER_SPLIT
    kb1 = tl.minimum(kb0 + KB_PER_SPLIT, tl.cdiv(K, BKC))
    if SWAP:
        acc = tl.zeros((BN, BMT), dtype=tl.float32)
    else:
        acc = tl.zeros((BMT, BN), dtype=tl.float32)
    if PLAIN:
        s_cols = bs_ptr + srow0 * sbs_r  # the tile's one scale row
    else:
        s_cols = bs_ptr + _scale_rows(rb_ptr, offs_n, n_ok, PLAIN, PLAIN_BN_C) * sbs_r  # [BN] each column's
        # the pipeliner leaves the per-column scale gather synchronous, so each step's scales are read one
        # step ahead (H200, M=16 12288x2048 W8A16: 13.2 -> 12.7 us). The plain map's one scalar per step
        # gained nothing from it (-1 to +9 %, BENCHMARKS.md 2026-11-29 ~10:20)
        w_s_next = _step_scales(s_cols, kb0, n_ok, BKC, BLOCK_K, PLAIN)  # [BN]
    for kb in range(kb0, kb1):
        k = kb * BKC + kr  # [BK]
        k_ok = k < K
        w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)  # [BN, BK]
        a = tl.load(a_rows + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)  # [BMT, BK]
        sblk = (kb * BKC) // BLOCK_K
        if PLAIN:
            w_s = _step_scales(s_cols, kb, n_ok, BKC, BLOCK_K, PLAIN)
        else:
            w_s = tl.expand_dims(w_s_next, 1 if SWAP else 0)  # [BN, 1] or [1, BN]
            w_s_next = _step_scales(s_cols, tl.minimum(kb + 1, kb1 - 1), n_ok, BKC, BLOCK_K, PLAIN)
        if SWAP:
            acc = _swap_ab_step(acc, w, a, w_s, as_rows, sblk, m_ok, A_MODE, FP8_MAX_C, F32)  # [BN, BMT]
        else:
            acc = _rows_step(acc, w, a, w_s, as_rows, sblk, m_ok, A_MODE, FP8_MAX_C, F32)  # [BMT, BN]
    if PDL == 1:
        gdc_launch_dependents()
    if SWAP:
        acc = tl.trans(acc)  # [BMT, BN]
    mask = m_ok[:, None] & n_ok[None, :]
    if SPLIT > 1:
        # every split stores its fp32 partial; the last one to arrive at the tile's counter adds them
        # up in split order (deterministic) and resets the counter
        w_off = offs_m64[:, None] * N + offs_n[None, :]
        tl.store(ws_ptr + pid_k.to(tl.int64) * (M * N) + w_off, acc, mask=mask)
        tl.debug_barrier()  # all of this program's partial is written before the release below
        arrived = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT - 1:
            acc = tl.zeros((BMT, BN), dtype=tl.float32)
            for s in range(SPLIT):
                acc += tl.load(ws_ptr + s * (M * N) + w_off, mask=mask, other=0.0, cache_modifier=".cg")
            _store_out(acc, bias_ptr, c_ptr, offs_m64, offs_n, n_ok, mask, sc_m, HAS_BIAS)
            tl.atomic_xchg(cnt_ptr + pid_n, 0, sem="relaxed", scope="gpu")
    else:
        _store_out(acc, bias_ptr, c_ptr, offs_m64, offs_n, n_ok, mask, sc_m, HAS_BIAS)


@triton.jit
def _store_out(acc, bias_ptr, c_ptr, offs_m64, offs_n, n_ok, mask, sc_m, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(c_ptr + offs_m64[:, None] * sc_m + offs_n[None, :], acc.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dequant_kernel(
    w_ptr, s_ptr, rb_ptr, out_ptr, N, K, sw_n, ss_r, so_n,
    BLOCK_K: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, PLAIN: tl.constexpr, PLAIN_BN_C: tl.constexpr,
):  # fmt: skip
    """One [BR, BC] tile, BC dividing BLOCK_K: one scale per row (a [BR] gather, not one per element)."""
    r = tl.program_id(0) * BR + tl.arange(0, BR)  # [BR]
    c0 = tl.program_id(1) * BC
    c = c0 + tl.arange(0, BC)  # [BC]
    r_ok = r < N
    m = r_ok[:, None] & (c < K)[None, :]
    srow = _scale_rows(rb_ptr, r, r_ok, PLAIN, PLAIN_BN_C)  # [BR]
    sc = tl.load(s_ptr + srow * ss_r + c0 // BLOCK_K, mask=r_ok, other=0.0)  # [BR]
    w = tl.load(w_ptr + r.to(tl.int64)[:, None] * sw_n + c[None, :], mask=m, other=0.0).to(tl.float32)
    tl.store(
        out_ptr + r.to(tl.int64)[:, None] * so_n + c[None, :],
        (w * sc[:, None]).to(out_ptr.dtype.element_ty),
        mask=m,
    )


_COUNTERS: dict[torch.device, torch.Tensor] = {}


def _tile_counters(device: torch.device, n: int) -> torch.Tensor:
    """Per-tile arrival counters of the split-K GEMM: zero between launches (the last split of a
    tile resets its own), so one buffer per device serves every call and CUDA-graph replay. Trap:
    two split-K GEMMs running at once on different streams of one device would share it."""
    buf = _COUNTERS.get(device)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
        _COUNTERS[device] = buf
    return buf


def dequant_to(
    w_q: torch.Tensor, scale_inv: torch.Tensor, row_block: torch.Tensor | None, block_k: int, dtype
) -> torch.Tensor:
    """``w_q [N, K]`` e4m3 -> ``[N, K]`` in ``dtype`` (``w_q * scale_inv[row_block[n], k // block_k]``)."""
    n, k = w_q.shape
    out = torch.empty(n, k, dtype=dtype, device=w_q.device)
    br, bc = 64, BK  # BK divides block_k (checked with the weight)
    _dequant_kernel[(triton.cdiv(n, br), triton.cdiv(k, bc))](
        w_q, scale_inv, w_q if row_block is None else row_block, out, n, k, w_q.stride(0),
        scale_inv.stride(0), out.stride(0),
        BLOCK_K=block_k, BR=br, BC=bc, PLAIN=row_block is None, PLAIN_BN_C=PLAIN_BN, num_warps=4,
    )  # fmt: skip
    return out


def _check_quant_input(x: torch.Tensor, group: int) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be [M, K], got {tuple(x.shape)}")
    if x.stride(1) != 1:
        raise ValueError(f"x must have unit stride on K, got strides {tuple(x.stride())}")
    if group <= 0 or group & (group - 1):
        raise ValueError(f"group must be a power of two, got {group}")


def per_token_group_quant_fp8(x: torch.Tensor, group: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of ``reference.per_token_group_quant_fp8``: ``x [M, K]`` -> ``(x_q, scales)``."""
    return _group_quant(x, group, False)


def _group_quant(x: torch.Tensor, group: int, pdl: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_token_group_quant_fp8``; ``pdl``: launched with PDL, letting the next kernel launch at once
    (only for a consumer that waits before it reads the output, as the GEMV does)."""
    _check_quant_input(x, group)
    m, k = x.shape
    q = torch.empty(m, k, dtype=FP8_DTYPE, device=x.device)
    s = torch.empty(m, triton.cdiv(k, group), dtype=torch.float32, device=x.device)
    _launch_group_quant(x, q, s, group, max(1, 2048 // group), False, pdl)
    return q, s


def fake_quant(x: torch.Tensor, group: int = 128) -> torch.Tensor:
    """``x [M, K]`` -> ``[M, K]`` fp32: each element's e4m3 value times its group's scale, the activation a
    W8A8 GEMM multiplies (``per_token_group_quant_fp8``'s arithmetic; each product rounds once in fp32,
    2^-24 relative, far below the e4m3 rounding). With PDL the GEMV after it starts streaming weights
    while this runs."""
    _check_quant_input(x, group)
    y = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    # one program per 16 groups: 1, 2 or 4 programs per 1-row GEMV made no difference (H200)
    _launch_group_quant(x, y, y, group, 16, True, use_pdl(x))
    return y


def _launch_group_quant(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, group: int, gpp_max: int,
                        fake: bool, pdl: bool) -> None:  # fmt: skip
    """``_group_quant_kernel`` over ``x [M, K]`` into ``q`` and ``s`` (``fake``: ``q`` only, fp32), at most
    ``gpp_max`` groups per program."""
    m, k = x.shape
    if m == 0 or k == 0:
        return
    kb = triton.cdiv(k, group)
    gpp = min(triton.next_power_of_2(kb), gpp_max)
    _group_quant_kernel[(m, triton.cdiv(kb, gpp))](
        x, q, s, k, kb, x.stride(0), q.stride(0), 0 if fake else s.stride(0),
        G=group, GPP=gpp, FP8_MAX_C=FP8_MAX, FAKE=fake, PDL=pdl, num_warps=4, **pdl_launch(pdl),
    )  # fmt: skip


@contextlib.contextmanager
def config_restored() -> Iterator[dict[str, Any]]:
    """For overrides of ``CONFIG`` (sweeps, tests): yields a copy of it as it was, and puts that back on
    exit (``ops.moe.kernels.configs_restored`` is the MoE tables' twin)."""
    saved = dict(CONFIG)
    try:
        yield dict(saved)
    finally:
        CONFIG.clear()
        CONFIG.update(saved)


def gemv_config(n: int, key: str = "gemv", m: int = 1) -> tuple[int, int, int, int] | None:
    """The streaming GEMV's (BN, BK, warps, stages) for ``m`` activation rows and ``n`` output columns
    from ``CONFIG[key]`` (``key`` names the one-row tiers; ``m`` >= 2 reads ``key``'s ``_rows`` tiers);
    None: past ``CONFIG["gemv_m_max"]`` rows, or no tiers."""
    if m > min(CONFIG["gemv_m_max"], gemv.MAX_ROWS):
        return None
    return _tier(CONFIG[key if m == 1 else key.replace("gemv", "gemv_rows")], n)


def _tier(tiers, n: int):
    """The config of the first ``(min N, config)`` tier that ``n`` reaches (below every tier: the last; no
    tiers: None)."""
    if tiers is None:
        return None
    return next((cfg for min_n, cfg in tiers if n >= min_n), tiers[-1][1])


def check_block_fp8_weight(
    w_q: torch.Tensor, scale_inv: torch.Tensor, row_block: torch.Tensor | None, block_k: int
) -> None:
    """Validates a block-FP8 weight for the GPU GEMM (once per call; cheap, no host sync)."""
    if w_q.dim() != 2 or w_q.dtype != FP8_DTYPE:
        raise ValueError(f"w_q must be a 2-D {FP8_DTYPE} tensor, got {tuple(w_q.shape)} {w_q.dtype}")
    n, k = w_q.shape
    if w_q.stride(1) != 1:
        raise ValueError(f"w_q must have unit stride on K, got strides {tuple(w_q.stride())}")
    if block_k % BK:
        raise ValueError(f"block_k must be a multiple of {BK}, got {block_k}")
    if scale_inv.dim() != 2 or scale_inv.shape[1] != triton.cdiv(k, block_k) or scale_inv.stride(1) != 1:
        raise ValueError(
            f"scale_inv must be [NB, ceil(K={k}/{block_k})] with unit last stride, got {tuple(scale_inv.shape)}"
        )
    if scale_inv.dtype != torch.float32:
        raise ValueError(f"scale_inv must be float32, got {scale_inv.dtype}")
    if row_block is None:
        if scale_inv.shape[0] < triton.cdiv(n, PLAIN_BN):
            raise ValueError(
                f"scale_inv must have ceil(N={n}/{PLAIN_BN}) rows for row_block=None, got {scale_inv.shape[0]}"
            )
    elif row_block.shape != (n,) or row_block.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"row_block must be an int tensor of shape [{n}], got {tuple(row_block.shape)}")
    for name, t in (("scale_inv", scale_inv), ("row_block", row_block)):
        if t is not None and t.device != w_q.device:
            raise ValueError(f"{name} must be on {w_q.device}, got {t.device}")


def _tma_ok(a: torch.Tensor, w_q: torch.Tensor) -> bool:
    """TMA tiles need Hopper or newer, 16-byte aligned bases and row strides (e4m3: K % 16 == 0)."""
    if INTERPRET or not a.is_cuda or capability(a.device)[0] < 9:
        return False
    return all(t.data_ptr() % 16 == 0 and (t.stride(0) % 16 == 0) for t in (a, w_q))


def _gemm_tma(a, a_s, w_q, scale_inv, bias, out, block_k: int) -> torch.Tensor:
    from triton.tools.tensor_descriptor import TensorDescriptor

    m, k = a.shape
    n = w_q.shape[0]
    bm, bn, warps, stages = CONFIG["tma_wide" if n >= CONFIG["tma_wide_n"] else "tma_narrow"]
    a_desc = TensorDescriptor.from_tensor(a, [bm, BK])
    b_desc = TensorDescriptor.from_tensor(w_q, [bn, BK])
    _fp8_gemm_tma_kernel[(triton.cdiv(m, bm) * triton.cdiv(n, bn),)](
        a_desc, a_s, b_desc, scale_inv, out if bias is None else bias, out,
        m, n, k, a_s.stride(0), scale_inv.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, BLOCK_K=block_k, BM=bm, BN=bn, BKC=BK, GROUP_M=8, PLAIN_BN_C=PLAIN_BN,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out


SMALL_TIERS = ("small", "small_w8a8", "small_w8a8_rowmap")  # the small-M kernel's tier tables in CONFIG


def small_tile(n: int, w8a8: bool, row_map: bool) -> SmallTile:
    """The small-M kernel's launch for ``n`` output columns: ``CONFIG["small"]`` (W8A16),
    ``["small_w8a8"]`` or, through a row map, ``["small_w8a8_rowmap"]`` tiers."""
    key = "small_w8a8_rowmap" if w8a8 and row_map else "small_w8a8" if w8a8 else "small"
    return _tier(CONFIG[key], n)


def _gemm_small(a, a_s, w_q, scale_inv, row_block, bias, out, mode: int, block_k: int) -> torch.Tensor:
    m, k = a.shape
    n = w_q.shape[0]
    tile = small_tile(n, mode != 0, row_block is not None)
    n_kb = triton.cdiv(k, BK)
    tiles = triton.cdiv(n, tile.bn)
    split = 1
    if tiles < tile.target:
        split = min(triton.cdiv(tile.target, tiles), max(1, n_kb // 2), 16)
    kps = triton.cdiv(n_kb, split)
    split = triton.cdiv(n_kb, kps)  # no empty splits
    ws = out if split == 1 else torch.empty(split, m, n, dtype=torch.float32, device=a.device)
    cnt = _tile_counters(a.device, tiles) if split > 1 else out
    pdl = tile.pdl if use_pdl(a) else 0
    _fp8_small_kernel[(tiles, split)](
        a, a_s, w_q, scale_inv, w_q if row_block is None else row_block, out if bias is None else bias, out,
        ws, cnt, m, n, k, a.stride(0), a_s.stride(0), w_q.stride(0), scale_inv.stride(0), out.stride(0), kps,
        A_MODE=mode, HAS_BIAS=bias is not None, PLAIN=row_block is None, SPLIT=split, BLOCK_K=block_k,
        BMT=max(16, triton.next_power_of_2(m)), BN=tile.bn, BKC=BK, PLAIN_BN_C=PLAIN_BN, FP8_MAX_C=FP8_MAX,
        F32=INTERPRET, SWAP=tile.swap, PDL=pdl, PREFETCH=tile.prefetch if pdl > 0 else 0,
        num_warps=tile.warps, num_stages=tile.stages, **pdl_launch(pdl > 0),
    )  # fmt: skip
    return out


def block_fp8_linear(
    x: torch.Tensor,
    w_q: torch.Tensor,
    scale_inv: torch.Tensor,
    row_block: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    *,
    block_k: int = 128,
    quantize_activation: bool = False,
    x_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Triton version of ``reference.block_fp8_linear``: ``x [M, K]`` -> ``[M, N]``.

    Output in ``x.dtype``, or with pre-quantised ``x`` (e4m3 plus ``x_scale``) in ``out_dtype`` (bf16).
    ``row_block`` None: the plain row map ``n // 128``.
    """
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"x must be [M, K] with unit stride on K, got {tuple(x.shape)} {tuple(x.stride())}")
    if x_scale is not None:
        if quantize_activation:
            raise ValueError("quantize_activation must be False with x_scale (x is already quantised)")
        check_prequantized(x, x_scale, block_k)
        if x_scale.stride(1) != 1:
            raise ValueError(f"x_scale must have unit stride on its last dim, got {tuple(x_scale.stride())}")
        out_dtype = out_dtype or torch.bfloat16
        if out_dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"out_dtype must be bfloat16, float16 or float32, got {out_dtype}")
    elif out_dtype is not None:
        raise ValueError("out_dtype is only for pre-quantised x (with x_scale); the output is x.dtype")
    elif x.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"x must be bfloat16 or float16 on the GPU, got {x.dtype}")
    check_block_fp8_weight(w_q, scale_inv, row_block, block_k)
    m, k = x.shape
    n = w_q.shape[0]
    if w_q.shape[1] != k:
        raise ValueError(f"w_q must be [N, K={k}], got {tuple(w_q.shape)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must be [{n}], got {tuple(bias.shape)}")
    if x_scale is None and not quantize_activation and m >= CONFIG["dequant_m_min"]:
        # large-M W8A16: a bf16 copy of the weight (N·K·3 bytes moved, ~5 % of the GEMM here) and
        # cuBLAS beat the in-register widening, which halves the MMA rate of a Triton bf16 GEMM
        return torch.nn.functional.linear(x, dequant_to(w_q, scale_inv, row_block, block_k, x.dtype), bias)
    out = torch.empty(m, n, dtype=out_dtype or x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    if m <= CONFIG["small_m_max"]:
        mode = 1 if x_scale is not None else 2 if quantize_activation else 0
        cfg = gemv_config(n, "gemv_w8a8" if mode == 2 else "gemv", m)
        if mode == 2 and CONFIG["w8a8_gemv"] and gemv.supports(0, block_k, cfg):
            # the rows quantised by a small kernel ahead, whose launch PDL overlaps with the GEMV's first
            # weight tiles. (The GEMV quantising the row itself, once per program, was 0.9-1.4 us slower
            # on an H200.)
            if m <= CONFIG["w8a8_e4m3_rows_max"]:
                (x, x_scale), mode = _group_quant(x, block_k, use_pdl(x)), 1
            else:
                x, mode = fake_quant(x, block_k), 0
        if gemv.supports(mode, block_k, cfg):
            return gemv.gemv(
                x, x_scale, w_q, scale_inv, row_block, bias, out, mode=mode, block_k=block_k, config=cfg,
                plain_bn=PLAIN_BN,
            )  # fmt: skip
        if mode == 2 and block_k != BK:
            # the inline quant groups are one 128-wide K step; W8A8 groups are block_k wide
            x, x_scale = per_token_group_quant_fp8(x, block_k)
            mode = 1
        return _gemm_small(
            x, x if x_scale is None else x_scale, w_q, scale_inv, row_block, bias, out, mode, block_k
        )
    a, a_s, mode = x, x, 0
    if x_scale is not None:
        a_s, mode = x_scale, 1
    elif quantize_activation:
        a, a_s = per_token_group_quant_fp8(x, block_k)
        mode = 1
    if mode == 1 and row_block is None and m > CONFIG["medium_m_max"] and _tma_ok(a, w_q):
        return _gemm_tma(a, a_s, w_q, scale_inv, bias, out, block_k)
    bm, bn, warps, stages = CONFIG["medium" if m <= CONFIG["medium_m_max"] else "large"]
    plain = row_block is None and PLAIN_BN % bn == 0
    if row_block is None and not plain:
        row_block = torch.arange(n, device=x.device, dtype=torch.int32) // PLAIN_BN
    _fp8_gemm_kernel[(triton.cdiv(m, bm) * triton.cdiv(n, bn),)](
        a, a_s, w_q, scale_inv, w_q if row_block is None else row_block, out if bias is None else bias, out,
        m, n, k, a.stride(0), a_s.stride(0), w_q.stride(0), scale_inv.stride(0), out.stride(0),
        A_MODE=mode, HAS_BIAS=bias is not None, PLAIN=plain, BLOCK_K=block_k,
        BM=bm, BN=bn, BKC=BK, GROUP_M=8, PLAIN_BN_C=PLAIN_BN, F32=INTERPRET,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out
