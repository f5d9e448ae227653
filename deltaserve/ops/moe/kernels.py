"""Triton fused MoE: routing, token-to-expert alignment, expert GEMMs with fused SiLU·mul and combine.

Pipeline (``fused_moe``), five launches plus a memset (three for decode batches, below), none of
them syncing with the host:

1. ``_route_kernel`` (one program per token): fp32 softmax over E logits, top-k by repeated
   arg-max (ties -> lowest id), optional renormalisation; with a shared expert, slot ``k`` gets id
   ``E`` and weight ``sigmoid(x · gate_weight)`` (the gate dot product is done here too).
2. ``_align_kernel`` (one program): histogram of the ``P = T·KT`` (token, slot) pairs per expert,
   each expert's rows padded to ``BM``, pair indices scattered into their expert's rows
   (``sorted_ids``, sentinel ``P``), and the expert of every ``BM`` block (``block_expert``, -1 for
   unused blocks). Buffers are sized from the upper bound ``(P + min(E1, P)·(BM-1)) / BM`` blocks.
3. ``_moe_up_kernel``: per (block, N tile) ``silu(x Wgᵀ) * (x Wuᵀ)`` into ``inter [P, I]``.
4. ``_moe_down_kernel``: ``inter Wdᵀ`` times the routing weight, atomically added (fp32) into
   ``out32 [T, H]``: the combine over a token's experts is the add.
5. ``out32`` cast to the activation dtype.

Decode-sized batches (``P <= SMALL_PAIRS``) replace steps 1-2 and the memset with one launch,
``_route_align_small_kernel``: one program routes every token, zeroes ``out32`` and aligns the pairs
by a ``[P, P]`` comparison (experts get blocks in order of first appearance) instead of a histogram.
Given the router weight instead of the logits, ``_router_setup_small_kernel`` also does the router
GEMM in that launch (programs of ``ROUTER_EXPERTS_PER_PROGRAM`` experts each; the last to arrive at
an acq_rel counter does the set-up). With ``SMALL_COMBINE`` the down GEMM stores each pair's row
(no atomics, no zeroing) and the last program of each output column tile sums every token's slots
in slot order and casts (step 5): decode is set-up (+ router GEMM), up, down, deterministic. One
token (``DOWN_GEMV_MAX_T``) runs the down GEMM as ``_moe_down_gemv_kernel`` instead: each program
owns a few hidden columns and walks the pairs in slot order, so the combine is its accumulator; with
FP8 experts (``UP_GEMV``) the gate/up GEMM is ``_moe_up_gemv_kernel`` too (weight rows streamed and
widened to fp32 in registers, no 16-row MMA block for the one real row).

The shared expert is the always-on expert ``E`` (its weights are separate tensors; the kernels
pick the base pointer per block). FP8-block weights (e4m3 + fp32 ``scale_inv [E, NB, KB]`` +
``row_block``) are widened to the activation dtype in registers (W8A16; exact) and the per-block
scale multiplies each K step's fp32 partial, so the weight bytes read are halved. Where
``CONFIGS`` says so (FP8 experts at prefill sizes), the gate/up GEMM runs swap-AB instead: the
weight rows are the MMA's M side and each FP8 tile is dequantised in registers (w·scale rounded to the
activation dtype, as in a dequantised checkpoint), so the MMAs accumulate in place.
Pair ids outside ``0..E-1`` (e.g. -1 for padding tokens) contribute nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from deltaserve.ops.moe.reference import ExpertWeights, SharedExpertWeights
from deltaserve.ops.pdl import gdc_wait, pdl_launch, use_pdl
from deltaserve.ops.triton_common import INTERPRET, TL_DTYPE, dot

FP8_DTYPE = torch.float8_e4m3fn

# Launch configs per expert weight kind, keyed by the mean rows per used expert:
# (max_avg_rows, BM, gate/up (BN, BK, warps, stages, swap-AB), down (BN, BK, warps, stages)).
# Benchmarks and sweeps may override them. Swap-AB puts the weight rows on the gate/up MMA's M side,
# dequantises FP8 tiles in registers and accumulates in place (the plain kernel waits on every MMA to
# scale it). Measurements behind them:
# - prefill buckets, bf16: the H100 sweep of 2026-11-27 (T=1 49 us vs 51-53, T=4096 BM128 2.5 ms vs
#   BM64 3.4 ms);
# - decode bucket: H200, whole Qwen3-Next fused_moe at T = 16 / 64 / 256 (scripts/moe_fp8_sweep.py,
#   2026-11-28): up (32, 64, 4, 6) + down (64, 64, 4, 6) -> (32, 128, 4, 4) + (128, 64, 4, 6) took FP8
#   experts from 239 / 589 / 820 to 215 / 526 / 738 us and bf16 ones from 239 / 604 / 856 to 225 / 565 /
#   804 us (an FP8 tile of the old shape carried half the bytes per pipeline stage); swap-AB was slower
#   there (265 against 239 us);
# - FP8 prefill buckets: H200, whole fused_moe (scripts/moe_fp8_sweep.py prefill, 2026-11-28): T=1024
#   (BM 32) 1603 -> 1476 us with the swapped gate/up, -> 1082 us with the down tile too (bf16 experts:
#   1588 us); T=4096 (BM 128) 3527 -> 3015 us (the plain FP8 gate/up tile (64, 64, 8, 3) there used 255
#   registers and spilled; bf16: 2107 us).
MoeConfig = tuple[int, int, tuple[int, int, int, int, bool], tuple[int, int, int, int]]
CONFIGS: dict[str, list[MoeConfig]] = {
    "bf16": [
        (16, 16, (32, 128, 4, 4, False), (128, 64, 4, 6)),
        (48, 32, (64, 128, 4, 4, False), (64, 128, 4, 4)),
        (1 << 62, 128, (64, 64, 8, 3, False), (128, 64, 8, 3)),
    ],
    "fp8": [
        (16, 16, (32, 128, 4, 4, False), (128, 64, 4, 6)),
        (48, 32, (64, 128, 4, 3, True), (128, 64, 4, 4)),
        (1 << 62, 128, (64, 32, 4, 4, True), (128, 64, 8, 3)),
    ],
}


@contextlib.contextmanager
def configs_restored() -> Iterator[dict[str, list[MoeConfig]]]:
    """Yields ``CONFIGS`` for in-place overrides (sweeps, tests) and restores every table on exit."""
    saved = {kind: list(rows) for kind, rows in CONFIGS.items()}
    try:
        yield CONFIGS
    finally:
        for kind, rows in saved.items():
            CONFIGS[kind][:] = rows


ALIGN_CHUNK = 1024
# Up to this many (token, slot) pairs, routing + zeroing + alignment is one single-program launch
# (decode; the [P, P] pair comparison replaces the expert histogram).
SMALL_PAIRS = 64
SMALL_SETUP_WARPS = 4  # H100, T=1 fused MoE: 4 warps 40.5 us, 2 warps 40.6, 1 warp 42.6
# Router GEMM folded into the decode set-up (``router_weight`` given): experts per logits program
# (E=512: 128 + 1 programs, one wave on 132 SMs; untuned) and the most elements of one program's
# [T, experts, K] product tile (bounds its registers; K step = tile / (T_pow2 * experts)).
ROUTER_EXPERTS_PER_PROGRAM = 4
ROUTER_TILE = 4096
# Tokens up to which the router GEMM rides in the set-up launch. H100, Qwen3-Next layer, bf16: T=1
# 43.3 -> 40.9 us; T=3 99.2 -> 103.1 and T=5 149.5 -> 167.5 us (the last program routes the tokens
# one by one), so larger decode batches run cuBLAS + the logits set-up.
ROUTER_FUSED_MAX_T = 1
# Decode batches: the down GEMM stores each pair's row and the last program of each output column
# tile sums every token's slots in order and casts (deterministic; no memset, no cast launch).
SMALL_COMBINE = True
# One token (B=1 decode): the down GEMM as one GEMV pass instead (``_moe_down_gemv_kernel``): each
# program owns BN output columns and walks the pairs in slot order, so the sum over the token's
# experts is its own accumulator (no pair rows, counters or second pass). (BN, warps, stages).
DOWN_GEMV_MAX_T = 1
# H100, Qwen3-Next layer at T=1, whole fused_moe with the router GEMM (scripts/moe_gemv_probe.py,
# 2026-11-28): tiled down GEMM 42.5 us (fp8 experts 44.2); GEMV (4,4,3) 39.6 (42.3), (8,4,3) 40.1-40.6,
# (16,4,3) 41.3-41.7; ids in registers or loaded per pair within ~0.5 us (noise).
DOWN_GEMV = (4, 4, 3)
DOWN_GEMV_IDS_IN_REGS = True
# One token: the gate/up GEMM as a GEMV too (``_moe_up_gemv_kernel``), per weight kind ("bf16", "fp8"):
# (BN rows, BK columns per step, warps, stages), None for the tiled MMA kernel. H200, whole Qwen3-Next
# fused_moe at T=1 (scripts/moe_gemv_probe.py, 2026-11-28): FP8 experts 37.4 us with the tiled up
# kernel (its FP8 tiles widen to bf16 through shared memory) -> 30.6 with (4, 1024, 4, 2); bf16
# experts 33.4 tiled, 33.9 for the best GEMV, so bf16 keeps the tiled kernel. 2026-11-29, with the
# scales on 8-column chunk sums (`_chunk_sums`; 128 -> 80 registers at (4, 1024, 4, 2)): FP8 28.4 us
# (tiled up kernel 35.2 in the same run; 27.3-27.8 for (2, 1024, 2, 2) / (4, 512, 2, 3), one run), bf16
# 32.5 tiled up kernel, 31.7 for the best GEMV (one run: not switched).
UP_GEMV: dict[str, tuple[int, int, int, int] | None] = {"bf16": None, "fp8": (4, 1024, 4, 2)}
GEMV_ACC_MAX = 8192  # most elements of that accumulator (wider intermediates: fewer columns per program)
POISON_SCRATCH = False  # tests: fill the decode scratch buffers with NaN (see _scratch)
# Keep silu(gate)*up in fp32 between the GEMMs (the down GEMM runs it as bf16 hi + lo): a bf16
# intermediate alone costs ~2.5e-3 relative error at Qwen3-Next shapes, above the 2e-3 budget.
PRECISE_INTER = True


@triton.jit
def _gate_dot(t, x_ptr, g_ptr, H, sx, BH: tl.constexpr):
    """``sigmoid(x[t] · gate_weight)`` in fp32 (one fixed summation order for both set-up paths)."""
    acc = tl.zeros((BH,), dtype=tl.float32)
    for h0 in range(0, H, BH):
        h = h0 + tl.arange(0, BH)
        xv = tl.load(x_ptr + t * sx + h, mask=h < H, other=0.0).to(tl.float32)
        gv = tl.load(g_ptr + h, mask=h < H, other=0.0).to(tl.float32)
        acc += xv * gv
    return tl.sigmoid(tl.sum(acc, axis=0))


@triton.jit
def _route_token(
    t, logit_ptr, x_ptr, g_ptr, w_ptr, id_ptr, E, H, sl, sx,
    TOPK: tl.constexpr, KT: tl.constexpr, KP: tl.constexpr, RENORM: tl.constexpr,
    HAS_SHARED: tl.constexpr, BE: tl.constexpr, BH: tl.constexpr,
    GATE_PRE: tl.constexpr, CG: tl.constexpr,
):  # fmt: skip
    """Softmax + top-k (+ shared-expert gate) of token ``t`` into ``w [T, KT]``, ``ids [T, KT]``.

    ``GATE_PRE``: ``g_ptr`` holds the finished gates ``[T]`` (fp32) instead of ``gate_weight [H]``;
    ``CG``: read the logits / gates with ``.cg`` (other programs of this launch wrote them). No defaults
    and no string constexprs here: triton 3.6 cannot pass those to a nested jit function.
    """
    e = tl.arange(0, BE)
    e_ok = e < E
    if CG:
        logit = tl.load(logit_ptr + t * sl + e, mask=e_ok, other=float("-inf"), cache_modifier=".cg")
    else:
        logit = tl.load(logit_ptr + t * sl + e, mask=e_ok, other=float("-inf"))
    logit = logit.to(tl.float32)  # [BE]
    p = tl.exp(logit - tl.max(logit, axis=0))
    p = p / tl.sum(p, axis=0)  # [BE] in [0, 1]
    # One max per pick: non-negative fp32 bits order like the values, and the low word (BE-1-e)
    # breaks ties towards the lowest expert id; taken and padding entries get key -1.
    key = (p.to(tl.int32, bitcast=True).to(tl.int64) << 32) | (BE - 1 - e).to(tl.int64)
    key = tl.where(e_ok, key, -1)  # [BE]
    j = tl.arange(0, KP)
    wv = tl.zeros((KP,), dtype=tl.float32)
    iv = tl.zeros((KP,), dtype=tl.int64)
    for s in tl.static_range(TOPK):
        best = tl.max(key, axis=0)
        idx = BE - 1 - (best & 0xFFFFFFFF)
        wv = tl.where(j == s, (best >> 32).to(tl.int32).to(tl.float32, bitcast=True), wv)
        iv = tl.where(j == s, idx, iv)
        key = tl.where(e == idx, -1, key)
    if RENORM:
        wv = wv / tl.sum(wv, axis=0)  # slots >= TOPK are still 0
    if HAS_SHARED:
        if GATE_PRE:
            gate = tl.load(g_ptr + t, cache_modifier=".cg")
        else:
            gate = _gate_dot(t, x_ptr, g_ptr, H, sx, BH)
        wv = tl.where(j == TOPK, gate, wv)
        iv = tl.where(j == TOPK, E, iv)
    tl.store(w_ptr + t * KT + j, wv, mask=j < KT)
    tl.store(id_ptr + t * KT + j, iv, mask=j < KT)


@triton.jit
def _route_kernel(
    logit_ptr, x_ptr, g_ptr, w_ptr, id_ptr, E, H, sl, sx,
    TOPK: tl.constexpr, KT: tl.constexpr, KP: tl.constexpr, RENORM: tl.constexpr,
    HAS_SHARED: tl.constexpr, BE: tl.constexpr, BH: tl.constexpr,
):  # fmt: skip
    _route_token(
        tl.program_id(0).to(tl.int64), logit_ptr, x_ptr, g_ptr, w_ptr, id_ptr, E, H, sl, sx,
        TOPK, KT, KP, RENORM, HAS_SHARED, BE, BH, False, False,
    )  # fmt: skip


@triton.jit
def _fill_small(out_ptr, sorted_ptr, bexp_ptr, P, L, NB, HOUT, CH: tl.constexpr):
    """Zero the fp32 combine target ``out [HOUT]``; ``sorted_ids`` <- sentinel ``P``, ``block_expert`` <- -1."""
    ar = tl.arange(0, CH)
    for i0 in range(0, HOUT, CH):
        tl.store(out_ptr + i0 + ar, tl.zeros((CH,), dtype=tl.float32), mask=i0 + ar < HOUT)
    for i0 in range(0, L, CH):
        tl.store(sorted_ptr + i0 + ar, P, mask=i0 + ar < L)
    for i0 in range(0, NB, CH):
        tl.store(bexp_ptr + i0 + ar, -1, mask=i0 + ar < NB)


@triton.jit
def _align_small(id_ptr, sorted_ptr, bexp_ptr, P, E1, BM: tl.constexpr, PP: tl.constexpr):
    """Alignment of the ``P <= PP`` pairs ``ids [P]`` without a histogram (buffers already filled).

    Experts get their blocks in order of first appearance among the pairs (the GEMMs only need each
    block to hold one expert): for pair i, ``rank`` = earlier pairs of its expert, ``count`` = all of
    them, and the block start is the running sum of ``cdiv(count, BM)`` over first appearances.
    """
    i = tl.arange(0, PP)
    ids = tl.load(id_ptr + i, mask=i < P, other=-1)  # [PP]
    ok = (ids >= 0) & (ids < E1) & (i < P)
    ids = tl.where(ok, ids, -1 - i)  # invalid pairs match nothing
    same = ids[:, None] == ids[None, :]  # [PP, PP]
    rank = tl.sum((same & (i[None, :] < i[:, None])).to(tl.int32), 1)  # [PP]
    count = tl.sum(same.to(tl.int32), 1)
    first = ok & (rank == 0)
    nblk = tl.where(first, (count + BM - 1) // BM, 0)
    excl = tl.cumsum(nblk, 0) - nblk  # [PP] block start, valid at first appearances
    f = tl.min(tl.where(same, i[None, :], PP), 1)  # [PP] first appearance of each pair's expert
    bstart = tl.sum(tl.where(i[None, :] == f[:, None], excl[None, :], 0), 1)
    tl.store(sorted_ptr + bstart * BM + rank, i, mask=ok)
    for jb in range(0, tl.max(nblk, axis=0)):
        tl.store(bexp_ptr + excl + jb, ids.to(tl.int32), mask=first & (jb < nblk))


@triton.jit
def _route_align_small_kernel(
    logit_ptr, x_ptr, g_ptr, w_ptr, id_ptr, sorted_ptr, bexp_ptr, out_ptr,
    T, E, H, sl, sx, P, E1, L, NB, HOUT,
    ROUTE: tl.constexpr, TOPK: tl.constexpr, KT: tl.constexpr, KP: tl.constexpr, RENORM: tl.constexpr,
    HAS_SHARED: tl.constexpr, BE: tl.constexpr, BH: tl.constexpr,
    BM: tl.constexpr, PP: tl.constexpr, CH: tl.constexpr,
):  # fmt: skip
    """Decode-sized MoE set-up in one program: (routing of every token,) zeroing the fp32 combine
    target ``out [HOUT]`` and the alignment of the ``P <= PP`` pairs (``_align_small``)."""
    if ROUTE:
        for t in range(T):
            _route_token(
                t, logit_ptr, x_ptr, g_ptr, w_ptr, id_ptr, E, H, sl, sx,
                TOPK, KT, KP, RENORM, HAS_SHARED, BE, BH, False, False,
            )  # fmt: skip
    _fill_small(out_ptr, sorted_ptr, bexp_ptr, P, L, NB, HOUT, CH)
    tl.debug_barrier()  # routed ids visible to every thread; fills land before the scatters
    _align_small(id_ptr, sorted_ptr, bexp_ptr, P, E1, BM, PP)


@triton.jit
def _round_act(v, IS_BF16: tl.constexpr):
    """fp32 -> the activation dtype, round-to-nearest-even, as an fp32 holding that value (bf16 by
    bits: the interpreter truncates ``.to(tl.bfloat16)``)."""
    if IS_BF16:
        b = v.to(tl.int32, bitcast=True)
        b = (b + (0x7FFF + ((b >> 16) & 1))) & -65536
        return tl.where(v == v, b.to(tl.float32, bitcast=True), v)  # NaN stays NaN
    else:
        return v.to(tl.float16).to(tl.float32)


@triton.jit
def _router_setup_small_kernel(
    x_ptr, rw_ptr, g_ptr, lg_ptr, gs_ptr, w_ptr, id_ptr, sorted_ptr, bexp_ptr, out_ptr, cnt_ptr,
    T, E, H, sx, srw, P, E1, L, NB, HOUT,
    TOPK: tl.constexpr, KT: tl.constexpr, KP: tl.constexpr, RENORM: tl.constexpr,
    HAS_SHARED: tl.constexpr, BE: tl.constexpr, BH: tl.constexpr,
    BM: tl.constexpr, PP: tl.constexpr, CH: tl.constexpr,
    TP: tl.constexpr, BEG: tl.constexpr, BK: tl.constexpr, IS_BF16: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Router GEMM + decode-sized set-up in one launch of ``G = cdiv(E, BEG) + 1`` programs.

    Program ``g < G-1``: the logits of experts ``g·BEG ..`` for all ``T <= TP`` tokens (fp32 sums over
    H in a fixed order, rounded to the activation dtype like a bf16/fp16 GEMM output) into
    ``lg [T, E]``. Program ``G-1``: the shared gates into ``gs [T]``, the zeroing and fills. Every
    program then arrives at ``cnt`` (acq_rel); the last one routes every token from ``lg``, aligns
    the pairs and resets ``cnt`` to 0 for the next launch (and CUDA-graph replays).
    """
    if PDL:  # ops/pdl.py: nothing is read or written before the previous kernel completes
        gdc_wait()
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    if pid < n_prog - 1:
        tt = tl.arange(0, TP)  # [TP]
        ee = pid * BEG + tl.arange(0, BEG)  # [BEG]
        t_ok = tt < T
        e_ok = ee < E
        kr = tl.arange(0, BK)
        x_rows = x_ptr + tt.to(tl.int64)[:, None] * sx  # [TP, 1]
        w_rows = rw_ptr + ee.to(tl.int64)[:, None] * srw  # [BEG, 1]
        acc = tl.zeros((TP, BEG), dtype=tl.float32)
        for k0 in range(0, H, BK):
            k = k0 + kr
            k_ok = k < H
            xv = tl.load(x_rows + k[None, :], mask=t_ok[:, None] & k_ok[None, :], other=0.0)  # [TP, BK]
            wv = tl.load(w_rows + k[None, :], mask=e_ok[:, None] & k_ok[None, :], other=0.0)  # [BEG, BK]
            prod = xv.to(tl.float32)[:, None, :] * wv.to(tl.float32)[None, :, :]  # [TP, BEG, BK] exact
            acc += tl.sum(prod, axis=2)
        lg = _round_act(acc, IS_BF16)  # [TP, BEG]
        dst = lg_ptr + tt[:, None] * E + ee[None, :]
        tl.store(dst, lg.to(lg_ptr.dtype.element_ty), mask=t_ok[:, None] & e_ok[None, :])
    else:
        if HAS_SHARED:
            for t in range(T):
                tl.store(gs_ptr + t, _gate_dot(t, x_ptr, g_ptr, H, sx, BH))
        _fill_small(out_ptr, sorted_ptr, bexp_ptr, P, L, NB, HOUT, CH)
    tl.debug_barrier()  # all of this program's stores are issued before the release below
    arrived = tl.atomic_add(cnt_ptr, 1, sem="acq_rel", scope="gpu")
    if arrived == n_prog - 1:
        for t in range(T):
            _route_token(
                t, lg_ptr, x_ptr, gs_ptr, w_ptr, id_ptr, E, H, E, sx,
                TOPK, KT, KP, RENORM, HAS_SHARED, BE, BH, True, True,
            )  # fmt: skip
        tl.debug_barrier()  # routed ids visible to every thread
        _align_small(id_ptr, sorted_ptr, bexp_ptr, P, E1, BM, PP)
        tl.atomic_xchg(cnt_ptr, 0, sem="relaxed", scope="gpu")


@triton.jit
def _align_kernel(
    id_ptr, sorted_ptr, bexp_ptr, cursor_ptr, P, E1, L, NB,
    BM: tl.constexpr, EP: tl.constexpr, CH: tl.constexpr,
):  # fmt: skip
    ar = tl.arange(0, CH)
    for i in range(0, L, CH):
        tl.store(sorted_ptr + i + ar, P, mask=i + ar < L)
    for i in range(0, NB, CH):
        tl.store(bexp_ptr + i + ar, -1, mask=i + ar < NB)
    counts = tl.zeros((EP,), dtype=tl.int32)
    for i in range(0, P, CH):
        ids = tl.load(id_ptr + i + ar, mask=i + ar < P, other=-1)
        ok = (ids >= 0) & (ids < E1)
        counts += tl.histogram(tl.where(ok, ids, EP - 1).to(tl.int32), EP)
    ev = tl.arange(0, EP)
    counts = tl.where(ev < E1, counts, 0)
    nblk = (counts + BM - 1) // BM  # [EP]
    bstart = tl.cumsum(nblk, axis=0) - nblk
    tl.store(cursor_ptr + ev, bstart * BM)
    tl.debug_barrier()  # the fills above land before the scatters below (one CTA)
    for jb in range(0, tl.max(nblk, axis=0)):
        tl.store(bexp_ptr + bstart + jb, ev, mask=jb < nblk)
    for i in range(0, P, CH):
        ids = tl.load(id_ptr + i + ar, mask=i + ar < P, other=-1)
        ok = (ids >= 0) & (ids < E1) & (i + ar < P)
        pos = tl.atomic_add(cursor_ptr + tl.where(ok, ids, 0), 1, mask=ok, sem="relaxed")
        tl.store(sorted_ptr + pos, i + ar, mask=ok)


@triton.jit
def _expert_base(
    e, E_SH, w_ptr, sw_e, sw_n, s_ptr, ss_e, ss_r, rb_ptr, shw_ptr, shw_n, shs_ptr, shs_r, shrb_ptr
):
    """Weight / scale / row-map bases and strides of expert ``e`` (``E_SH`` = the shared expert)."""
    if e == E_SH:
        wb = shw_ptr
        sn = shw_n
        sb = shs_ptr
        sr = shs_r
        rb = shrb_ptr
    else:
        wb = w_ptr + e.to(tl.int64) * sw_e
        sn = sw_n
        sb = s_ptr + e.to(tl.int64) * ss_e
        sr = ss_r
        rb = rb_ptr
    return wb, sn, sb, sr, rb


@triton.jit
def _moe_up_kernel(
    x_ptr, w_ptr, s_ptr, rb_ptr, shw_ptr, shs_ptr, shrb_ptr, sorted_ptr, bexp_ptr, inter_ptr,
    P, H, I, E_SH, sx, sw_e, sw_n, ss_e, ss_r, shw_n, shs_r,
    KT: tl.constexpr, W_FP8: tl.constexpr, BLOCK_K: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, F32: tl.constexpr, PDL: tl.constexpr,
    SWAP: tl.constexpr = False,
):  # fmt: skip
    """Gate/up GEMM of one expert block x ``BN`` intermediate columns, SiLU·mul fused. ``SWAP``: the
    weight rows are the MMA's M side (``_swapped_up``)."""
    if PDL:  # ops/pdl.py: nothing is read or written before the previous kernel completes
        gdc_wait()
    pid_m = tl.program_id(0)
    e = tl.load(bexp_ptr + pid_m)
    if e < 0:
        return
    pairs = tl.load(sorted_ptr + pid_m * BM + tl.arange(0, BM))  # [BM]
    p_ok = pairs < P
    tok = (pairs // KT).to(tl.int64)
    n = tl.program_id(1) * BN + tl.arange(0, BN)  # [BN]
    n_ok = n < I
    wb, sn, sb, sr, rb = _expert_base(
        e, E_SH, w_ptr, sw_e, sw_n, s_ptr, ss_e, ss_r, rb_ptr, shw_ptr, shw_n, shs_ptr, shs_r, shrb_ptr
    )
    g_cols = wb + n.to(tl.int64)[None, :] * sn  # [1, BN] gate rows
    u_cols = g_cols + I * sn  # up rows follow the gate rows
    if W_FP8:
        srow_g = tl.load(rb + n, mask=n_ok, other=0).to(tl.int64) * sr  # [BN]
        srow_u = tl.load(rb + I + n, mask=n_ok, other=0).to(tl.int64) * sr
    a_rows = x_ptr + tok[:, None] * sx  # [BM, 1]
    kr = tl.arange(0, BK)
    if SWAP:
        g_rows = wb + n.to(tl.int64)[:, None] * sn  # [BN, 1]
        acc_g, acc_u = _swapped_up(
            a_rows, p_ok, g_rows, g_rows + I * sn, n_ok, sb, srow_g if W_FP8 else n, srow_u if W_FP8 else n,
            kr, H, W_FP8, BLOCK_K, BM, BN, BK, F32,
        )  # fmt: skip
    else:
        acc_g, acc_u = _plain_up(
            a_rows, p_ok, g_cols, u_cols, n_ok, sb, srow_g if W_FP8 else n, srow_u if W_FP8 else n,
            kr, H, W_FP8, BLOCK_K, BM, BN, BK, F32,
        )  # fmt: skip
    h = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u
    dst = inter_ptr + pairs.to(tl.int64)[:, None] * I + n[None, :]
    tl.store(dst, h.to(inter_ptr.dtype.element_ty), mask=p_ok[:, None] & n_ok[None, :])


@triton.jit
def _plain_up(
    a_rows, p_ok, g_cols, u_cols, n_ok, sb, srow_g, srow_u, kr, H,
    W_FP8: tl.constexpr, BLOCK_K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    F32: tl.constexpr,
):  # fmt: skip
    """``([BM, BN] gate, [BM, BN] up)`` fp32: token rows x weight columns; FP8 products scaled per step."""
    acc_g = tl.zeros((BM, BN), dtype=tl.float32)
    acc_u = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, H, BK):
        k = k0 + kr
        k_ok = k < H
        a = tl.load(a_rows + k[None, :], mask=p_ok[:, None] & k_ok[None, :], other=0.0)  # [BM, BK]
        bmask = k_ok[:, None] & n_ok[None, :]
        bg = tl.load(g_cols + k[:, None], mask=bmask, other=0.0)  # [BK, BN]
        bu = tl.load(u_cols + k[:, None], mask=bmask, other=0.0)
        if W_FP8:
            sblk = k0 // BLOCK_K
            sg = tl.load(sb + srow_g + sblk, mask=n_ok, other=0.0)  # [BN]
            su = tl.load(sb + srow_u + sblk, mask=n_ok, other=0.0)
            zero = tl.zeros((BM, BN), dtype=tl.float32)
            acc_g += dot(a, bg.to(a.dtype), F32, zero) * sg[None, :]
            acc_u += dot(a, bu.to(a.dtype), F32, zero) * su[None, :]
        else:
            acc_g = dot(a, bg, F32, acc_g)
            acc_u = dot(a, bu, F32, acc_u)
    return acc_g, acc_u


@triton.jit
def _deq_rows(w, W_FP8: tl.constexpr, sb, srow, blk, n_ok, ACT: tl.constexpr):
    """A ``[BN, BK]`` weight tile in the activation dtype: FP8 rows times their block scale, rounded
    (the weight a dequantised checkpoint holds), so the MMA can accumulate in place."""
    if W_FP8:
        sc = tl.load(sb + srow + blk, mask=n_ok, other=0.0)  # [BN]
        out = (w.to(tl.float32) * sc[:, None]).to(ACT)
    else:
        out = w
    return out


@triton.jit
def _swapped_up(
    a_rows, p_ok, g_rows, u_rows, n_ok, sb, srow_g, srow_u, kr, H,
    W_FP8: tl.constexpr, BLOCK_K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    F32: tl.constexpr,
):  # fmt: skip
    """``_plain_up`` with the weight rows as the MMA's M side (``g_rows``/``u_rows`` ``[BN, 1]``): an
    FP8 tile is dequantised in registers and fed to the MMA from there, so every MMA accumulates in
    place (asynchronous wgmma, as the dense small-M FP8 kernel) instead of being waited on and scaled
    each K step."""
    acc_g = tl.zeros((BN, BM), dtype=tl.float32)
    acc_u = tl.zeros((BN, BM), dtype=tl.float32)
    for k0 in range(0, H, BK):
        k = k0 + kr
        k_ok = k < H
        a = tl.load(a_rows + k[None, :], mask=p_ok[:, None] & k_ok[None, :], other=0.0)  # [BM, BK]
        wmask = n_ok[:, None] & k_ok[None, :]
        wg = tl.load(g_rows + k[None, :], mask=wmask, other=0.0)  # [BN, BK]
        wu = tl.load(u_rows + k[None, :], mask=wmask, other=0.0)
        blk = k0 // BLOCK_K
        acc_g = dot(_deq_rows(wg, W_FP8, sb, srow_g, blk, n_ok, a.dtype), tl.trans(a), F32, acc_g)
        acc_u = dot(_deq_rows(wu, W_FP8, sb, srow_u, blk, n_ok, a.dtype), tl.trans(a), F32, acc_u)
    return tl.trans(acc_g), tl.trans(acc_u)


@triton.jit
def _down_tile(
    pid_m, e, inter_ptr, w_ptr, s_ptr, rb_ptr, shw_ptr, shs_ptr, shrb_ptr, sorted_ptr, tw_ptr, out_ptr,
    P, H, I, E_SH, sw_e, sw_n, ss_e, ss_r, shw_n, shs_r,
    KT: tl.constexpr, W_FP8: tl.constexpr, BLOCK_K: tl.constexpr, PRECISE: tl.constexpr,
    ACT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, F32: tl.constexpr,
    ROWS: tl.constexpr,
):  # fmt: skip
    """Block ``pid_m`` (expert ``e >= 0``) x column tile ``program_id(1)`` of the down GEMM, times the
    routing weights: atomically added into ``out [T, H]`` fp32, or with ``ROWS`` stored as the
    pairs' rows of ``out [P, H]`` fp32 (each pair is in exactly one block)."""
    pairs = tl.load(sorted_ptr + pid_m * BM + tl.arange(0, BM))  # [BM]
    p_ok = pairs < P
    pairs64 = pairs.to(tl.int64)
    n = tl.program_id(1) * BN + tl.arange(0, BN)  # [BN] output columns (hidden)
    n_ok = n < H
    wb, sn, sb, sr, rb = _expert_base(
        e, E_SH, w_ptr, sw_e, sw_n, s_ptr, ss_e, ss_r, rb_ptr, shw_ptr, shw_n, shs_ptr, shs_r, shrb_ptr
    )
    cols = wb + n.to(tl.int64)[None, :] * sn  # [1, BN]
    if W_FP8:
        srow = tl.load(rb + n, mask=n_ok, other=0).to(tl.int64) * sr
    a_rows = inter_ptr + pairs64[:, None] * I
    kr = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, I, BK):
        k = k0 + kr
        k_ok = k < I
        a = tl.load(a_rows + k[None, :], mask=p_ok[:, None] & k_ok[None, :], other=0.0)  # [BM, BK]
        b = tl.load(cols + k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)  # [BK, BN]
        if W_FP8:
            b = b.to(ACT)
        if PRECISE:  # fp32 intermediate as hi + lo halves in the activation dtype: two MMAs
            a_hi = a.to(ACT)
            a_lo = (a - a_hi.to(tl.float32)).to(ACT)
            part = dot(a_hi, b, F32, tl.zeros((BM, BN), dtype=tl.float32))
            part = dot(a_lo, b, F32, part)
        else:
            part = dot(a, b, F32, tl.zeros((BM, BN), dtype=tl.float32))
        if W_FP8:
            part = part * tl.load(sb + srow + k0 // BLOCK_K, mask=n_ok, other=0.0)[None, :]
        acc += part
    tw = tl.load(tw_ptr + pairs64, mask=p_ok, other=0.0)  # [BM] routing weight of each pair
    acc = acc * tw[:, None]
    if ROWS:
        tl.store(out_ptr + pairs64[:, None] * H + n[None, :], acc, mask=p_ok[:, None] & n_ok[None, :])
    else:
        dst = out_ptr + (pairs64 // KT)[:, None] * H + n[None, :]
        tl.atomic_add(dst, acc, mask=p_ok[:, None] & n_ok[None, :], sem="relaxed")


@triton.jit
def _moe_down_kernel(
    inter_ptr, w_ptr, s_ptr, rb_ptr, shw_ptr, shs_ptr, shrb_ptr, sorted_ptr, bexp_ptr, tw_ptr, out_ptr,
    id_ptr, act_ptr, cnt_ptr, T, P, H, I, E_SH, E1, sw_e, sw_n, ss_e, ss_r, shw_n, shs_r,
    KT: tl.constexpr, W_FP8: tl.constexpr, BLOCK_K: tl.constexpr, PRECISE: tl.constexpr,
    ACT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, F32: tl.constexpr,
    COMBINE: tl.constexpr, TB: tl.constexpr, ACT_BF16: tl.constexpr,
):  # fmt: skip
    """Without ``COMBINE``: adds into ``out [T, H]`` fp32 (atomics: any order).

    ``COMBINE`` (decode batches, ``T <= TB``): ``out [P, H]`` gets each pair's weighted row; every
    program of column tile ``j`` then arrives at ``cnt[j]`` (acq_rel), and the last one sums each
    token's valid slots (``0 <= ids < E1``) in slot order, rounds into ``act [T, H]`` and resets
    ``cnt[j]``: a deterministic combine, and no memset or cast launch."""
    pid_m = tl.program_id(0)
    e = tl.load(bexp_ptr + pid_m)
    if COMBINE:
        if e >= 0:
            _down_tile(
                pid_m, e, inter_ptr, w_ptr, s_ptr, rb_ptr, shw_ptr, shs_ptr, shrb_ptr, sorted_ptr, tw_ptr,
                out_ptr, P, H, I, E_SH, sw_e, sw_n, ss_e, ss_r, shw_n, shs_r,
                KT, W_FP8, BLOCK_K, PRECISE, ACT, BM, BN, BK, F32, True,
            )  # fmt: skip
        tl.debug_barrier()  # all of this program's rows are stored before the release below
        pid_n = tl.program_id(1)
        arrived = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if arrived == tl.num_programs(0) - 1:
            tt = tl.arange(0, TB)  # [TB]
            n = pid_n * BN + tl.arange(0, BN)  # [BN]
            t_ok = tt < T
            n_ok = n < H
            acc = tl.zeros((TB, BN), dtype=tl.float32)
            for s in tl.static_range(KT):
                pair = tt.to(tl.int64) * KT + s  # [TB]
                eid = tl.load(id_ptr + pair, mask=t_ok, other=-1)
                ok = t_ok & (eid >= 0) & (eid < E1)  # unrouted pairs have no row
                src = out_ptr + pair[:, None] * H + n[None, :]  # [TB, BN]
                acc += tl.load(src, mask=ok[:, None] & n_ok[None, :], other=0.0, cache_modifier=".cg")
            dst = act_ptr + tt.to(tl.int64)[:, None] * H + n[None, :]
            tl.store(dst, _round_act(acc, ACT_BF16).to(ACT), mask=t_ok[:, None] & n_ok[None, :])
            tl.atomic_xchg(cnt_ptr + pid_n, 0, sem="relaxed", scope="gpu")
    else:
        if e < 0:
            return
        _down_tile(
            pid_m, e, inter_ptr, w_ptr, s_ptr, rb_ptr, shw_ptr, shs_ptr, shrb_ptr, sorted_ptr, tw_ptr,
            out_ptr, P, H, I, E_SH, sw_e, sw_n, ss_e, ss_r, shw_n, shs_r,
            KT, W_FP8, BLOCK_K, PRECISE, ACT, BM, BN, BK, F32, False,
        )  # fmt: skip


@triton.jit
def _pair_expert(p, E1, id_ptr, tw_ptr, jj, ids_v, tw_v, IDS_IN_REGS: tl.constexpr):
    """(valid, expert (0 when not valid), routing weight (0 when not valid)) of pair ``p``; unrouted
    pairs have ids outside ``0..E1-1``."""
    if IDS_IN_REGS:
        eid = tl.sum(tl.where(jj == p, ids_v, 0), axis=0)
        tw_p = tl.sum(tl.where(jj == p, tw_v, 0.0), axis=0)
    else:
        eid = tl.load(id_ptr + p)
        tw_p = tl.load(tw_ptr + p)
    ok = (eid >= 0) & (eid < E1)
    return ok, tl.where(ok, eid, 0), tl.where(ok, tw_p, 0.0)


@triton.jit
def _block_scaled(w_ptrs, w_mask, W_FP8: tl.constexpr, sb, srow, blk, s_mask):
    """A weight tile ``[BN, NB, CH]`` as fp32, times its 128-block scales for FP8 weights: ``srow [BN]``
    the rows' scale-row offsets, ``blk [NB]`` each CH-column chunk's scale column (one scale load per
    chunk, not per element)."""
    wt = tl.load(w_ptrs, mask=w_mask, other=0.0).to(tl.float32)
    if W_FP8:
        sc = tl.load(sb + srow[:, None] + blk[None, :], mask=s_mask, other=0.0)  # [BN, NB]
        wt = wt * sc[:, :, None]
    return wt


@triton.jit
def _chunk_sums(w_ptrs, w_mask, xv, W_FP8: tl.constexpr, sb, srow, blk, s_mask):
    """``sum(w * xv)`` over each CH-column chunk of a weight tile ``[BN, NB, CH]``, times the chunk's
    128-block scale for FP8 weights: ``[BN, NB]``. Scaling the chunk sums instead of the elements
    (``_block_scaled``) frees registers, so more weight bytes are in flight per SM."""
    d = tl.sum(tl.load(w_ptrs, mask=w_mask, other=0.0).to(tl.float32) * xv, 2)  # [BN, NB]
    if W_FP8:
        d = d * tl.load(sb + srow[:, None] + blk[None, :], mask=s_mask, other=0.0)
    return d


@triton.jit
def _moe_down_gemv_kernel(
    inter_ptr, w_ptr, s_ptr, rb_ptr, shw_ptr, shs_ptr, shrb_ptr, tw_ptr, id_ptr, act_ptr,
    P, H, I, E_SH, E1, sw_e, sw_n, ss_e, ss_r, shw_n, shs_r,
    W_FP8: tl.constexpr, BLOCK_K: tl.constexpr, ACT: tl.constexpr, BN: tl.constexpr,
    BI: tl.constexpr, CH: tl.constexpr, ACT_BF16: tl.constexpr, PP: tl.constexpr, IDS_IN_REGS: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """Down GEMM + combine + cast of ONE token's ``P`` pairs: program ``j`` owns hidden columns
    ``j·BN ..`` and, pair by pair in slot order, adds ``W_e[cols, :] * (inter[p] · w_p)`` into a
    ``[BN, I]`` fp32 accumulator; one row sum at the end, rounded into ``act [1, H]``. Each expert
    tile is read once; unrouted pairs (ids outside ``0..E1-1``) read and add nothing. Tiles are
    ``[BN, BI/CH, CH]`` with ``CH`` dividing the FP8 scale block, so a scale is loaded per chunk."""
    if PDL:  # ops/pdl.py: nothing is read or written before the previous kernel completes
        gdc_wait()
    NB: tl.constexpr = BI // CH
    n = tl.program_id(0) * BN + tl.arange(0, BN)  # [BN]
    c = tl.arange(0, NB)[:, None] * CH + tl.arange(0, CH)[None, :]  # [NB, CH] intermediate columns
    blk = (tl.arange(0, NB) * CH) // BLOCK_K  # [NB] scale column of each chunk
    acc = tl.zeros((BN, NB, CH), dtype=tl.float32)
    jj = tl.arange(0, PP)
    ids_v = jj
    tw_v = jj.to(tl.float32)
    if IDS_IN_REGS:  # every pair's id and weight up front: no load -> address chain in the loop
        ids_v = tl.load(id_ptr + jj, mask=jj < P, other=-1)  # [PP]
        tw_v = tl.load(tw_ptr + jj, mask=jj < P, other=0.0)  # [PP]
    for p in range(P):
        ok, e, tw = _pair_expert(p, E1, id_ptr, tw_ptr, jj, ids_v, tw_v, IDS_IN_REGS)
        wb, sn, sb, sr, rb = _expert_base(
            e, E_SH, w_ptr, sw_e, sw_n, s_ptr, ss_e, ss_r, rb_ptr, shw_ptr, shw_n, shs_ptr, shs_r, shrb_ptr
        )
        # masks against `where(ok, size, 0)`: no scalar masks (the interpreter rejects them), and the
        # compare with a 16-divisible bound keeps the vector loads
        r_ok = n < tl.where(ok, H, 0)  # [BN]
        c_ok = c < tl.where(ok, I, 0)  # [NB, CH]
        a = tl.load(inter_ptr + p * I + c, mask=c_ok, other=0.0).to(tl.float32) * tw  # [NB, CH]
        w_ptrs = wb + n.to(tl.int64)[:, None, None] * sn + c[None, :, :]  # [BN, NB, CH]
        srow = n
        if W_FP8:
            srow = tl.load(rb + n, mask=r_ok, other=0).to(tl.int64) * sr  # [BN]
        s_mask = r_ok[:, None] & (blk * BLOCK_K < I)[None, :]
        wt = _block_scaled(w_ptrs, r_ok[:, None, None] & c_ok[None, :, :], W_FP8, sb, srow, blk, s_mask)
        acc += wt * a[None, :, :]
    out = _round_act(tl.sum(tl.sum(acc, axis=2), axis=1), ACT_BF16)  # [BN]
    tl.store(act_ptr + n, out.to(ACT), mask=n < H)


@triton.jit
def _moe_up_gemv_kernel(
    x_ptr, w_ptr, s_ptr, rb_ptr, shw_ptr, shs_ptr, shrb_ptr, id_ptr, inter_ptr,
    P, H, I, E_SH, E1, sw_e, sw_n, ss_e, ss_r, shw_n, shs_r,
    W_FP8: tl.constexpr, BLOCK_K: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, CH: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """Gate/up GEMV + SiLU·mul of ONE token: program ``(p, j)`` computes
    ``inter[p, j·BN ..] = silu(x Wg_eᵀ) * (x Wu_eᵀ)`` for pair ``p``'s expert, streaming the weight rows
    in ``[BN, BK/CH, CH]`` tiles widened to fp32 in registers (FP8: one scale per CH-column chunk).
    The tiled kernel runs a 16-row MMA block for the one real row, and for FP8 weights widens each
    tile to the activation dtype through shared memory. Unrouted pairs write nothing (the down pass
    never reads their rows)."""
    if PDL:  # ops/pdl.py: nothing is read or written before the previous kernel completes
        gdc_wait()
    NB: tl.constexpr = BK // CH
    p = tl.program_id(0)
    eid = tl.load(id_ptr + p)
    if (eid < 0) | (eid >= E1):
        return
    wb, sn, sb, sr, rb = _expert_base(
        eid, E_SH, w_ptr, sw_e, sw_n, s_ptr, ss_e, ss_r, rb_ptr, shw_ptr, shw_n, shs_ptr, shs_r, shrb_ptr
    )
    n = tl.program_id(1) * BN + tl.arange(0, BN)  # [BN] gate rows; up rows are I + n
    n_ok = n < I
    c = tl.arange(0, NB)[:, None] * CH + tl.arange(0, CH)[None, :]  # [NB, CH]
    g_rows = wb + n.to(tl.int64)[:, None, None] * sn  # [BN, 1, 1]
    u_rows = g_rows + I * sn
    srow_g = n
    srow_u = n
    if W_FP8:
        srow_g = tl.load(rb + n, mask=n_ok, other=0).to(tl.int64) * sr  # [BN]
        srow_u = tl.load(rb + I + n, mask=n_ok, other=0).to(tl.int64) * sr
    kr = c[None, :, :] + 0 * n[:, None, None]  # [BN, NB, CH]
    acc_g = tl.zeros((BN, NB), dtype=tl.float32)
    acc_u = tl.zeros((BN, NB), dtype=tl.float32)
    for k0 in range(0, H, BK):
        k = k0 + kr  # [BN, NB, CH]
        k_ok = k < H
        # x at the weight tile's shape: one register layout for both (a [1, NB, CH] row would be converted
        # through shared memory every step), the repeated rows hit L1
        xv = tl.load(x_ptr + k, mask=k_ok, other=0.0).to(tl.float32)  # [BN, NB, CH]
        blk = (k0 + tl.arange(0, NB) * CH) // BLOCK_K  # [NB]
        s_mask = n_ok[:, None] & (blk * BLOCK_K < H)[None, :]
        w_mask = n_ok[:, None, None] & k_ok
        acc_g += _chunk_sums(g_rows + k, w_mask, xv, W_FP8, sb, srow_g, blk, s_mask)
        acc_u += _chunk_sums(u_rows + k, w_mask, xv, W_FP8, sb, srow_u, blk, s_mask)
    g = tl.sum(acc_g, axis=1)  # [BN]
    u = tl.sum(acc_u, axis=1)
    h = g / (1.0 + tl.exp(-g)) * u
    tl.store(inter_ptr + p.to(tl.int64) * I + n, h.to(inter_ptr.dtype.element_ty), mask=n_ok)


# ----------------------------------------------------------------------------------------------
# host side


def _chunk(block_k: int | None, width: int) -> int:
    """Columns per chunk of a GEMV tile row: the largest power of two dividing the FP8 scale block
    (so each chunk has one scale), at most ``width``; 128 without scales."""
    bk = block_k or 128
    return min(bk & -bk, width)


def _pick(avg_rows: float, kind: str):
    """(BM, gate/up config, down config) of ``CONFIGS[kind]`` for this mean rows per used expert."""
    for max_avg, bm, up, down in CONFIGS[kind]:
        if avg_rows <= max_avg:
            return bm, up, down
    return CONFIGS[kind][-1][1:]


def _route(logits: torch.Tensor, top_k: int, renormalize: bool, x=None, gate_weight=None):
    t, e = logits.shape
    kt = top_k + (1 if gate_weight is not None else 0)
    w = torch.empty(t, kt, dtype=torch.float32, device=logits.device)
    ids = torch.empty(t, kt, dtype=torch.int64, device=logits.device)
    if t == 0:
        return w, ids
    has_sh = gate_weight is not None
    _route_kernel[(t,)](
        logits, x if has_sh else logits, gate_weight if has_sh else logits, w, ids,
        e, x.shape[1] if has_sh else 1, logits.stride(0), x.stride(0) if has_sh else 0,
        TOPK=top_k, KT=kt, KP=triton.next_power_of_2(kt), RENORM=renormalize, HAS_SHARED=has_sh,
        BE=triton.next_power_of_2(e), BH=1024, num_warps=4,
    )  # fmt: skip
    return w, ids


def route_topk(
    router_logits: torch.Tensor, top_k: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of ``reference.route_topk``: ``[T, E]`` -> ``(weights [T, k] fp32, ids [T, k] int64)``."""
    if router_logits.dim() != 2 or router_logits.stride(1) != 1:
        raise ValueError(
            f"router_logits must be [T, E] with unit last stride, got {tuple(router_logits.shape)}"
        )
    if not 1 <= top_k <= router_logits.shape[1]:
        raise ValueError(f"top_k must be in 1..E={router_logits.shape[1]}, got {top_k}")
    return _route(router_logits, top_k, renormalize)


def _align_buffers(p: int, e1: int, bm: int, device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``sorted_ids [NB*BM]`` and ``block_expert [NB]`` for ``P`` pairs over ``E1`` experts, NB the upper
    bound ``(P + min(E1, P)·(BM-1)) / BM`` (every used expert's last block may be partly empty)."""
    nb = (p + min(e1, p) * (bm - 1)) // bm
    sorted_ids = torch.empty(nb * bm, dtype=torch.int32, device=device)
    bexp = torch.empty(nb, dtype=torch.int32, device=device)
    return sorted_ids, bexp, nb


def _align(ids: torch.Tensor, e1: int, bm: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``ids [T, KT]`` -> ``(sorted_ids [NB*BM] int32, block_expert [NB] int32, NB)`` (upper bound NB)."""
    p = ids.numel()
    sorted_ids, bexp, nb = _align_buffers(p, e1, bm, ids.device)
    ep = triton.next_power_of_2(e1 + 1)
    cursor = torch.empty(ep, dtype=torch.int32, device=ids.device)
    if p:
        _align_kernel[(1,)](
            ids, sorted_ids, bexp, cursor, p, e1, nb * bm, nb,
            BM=bm, EP=ep, CH=ALIGN_CHUNK, num_warps=8,
        )  # fmt: skip
    return sorted_ids, bexp, nb


class _Route(NamedTuple):
    """Routing still to do: ``logits [T, E]`` (or, with ``weight [E, H]``, ``x Wᵀ`` still to compute),
    top-k, renormalise, optional shared gate ``[1, H]``."""

    logits: torch.Tensor | None
    top_k: int
    renormalize: bool
    gate_weight: torch.Tensor | None
    weight: torch.Tensor | None = None


def _logits(x: torch.Tensor, route: _Route) -> torch.Tensor:
    """``route.logits``, or the router GEMM ``x Wᵀ`` in the activation dtype: ``[T, E]``."""
    return route.logits if route.weight is None else torch.nn.functional.linear(x, route.weight)


def _setup_small(x, route: _Route | None, ids, w, e1: int, bm: int, out32: torch.Tensor):
    """One launch for decode-sized batches (``P <= SMALL_PAIRS``): routing (when ``route``), zeroing
    ``out32`` and the alignment into ``w``/``ids`` and the returned ``(sorted_ids, block_expert, NB)``."""
    t, kt = ids.shape
    p = t * kt
    sorted_ids, bexp, nb = _align_buffers(p, e1, bm, x.device)
    lg = route.logits if route is not None else w
    has_sh = route is not None and route.gate_weight is not None
    e = lg.shape[1] if route is not None else 1
    _route_align_small_kernel[(1,)](
        lg, x, route.gate_weight if has_sh else lg, w, ids, sorted_ids, bexp, out32,
        t, e, x.shape[1], lg.stride(0), x.stride(0), p, e1, nb * bm, nb, out32.numel(),
        ROUTE=route is not None, TOPK=route.top_k if route is not None else 1, KT=kt,
        KP=triton.next_power_of_2(kt), RENORM=bool(route is not None and route.renormalize),
        HAS_SHARED=has_sh, BE=triton.next_power_of_2(e), BH=1024,
        BM=bm, PP=triton.next_power_of_2(p), CH=ALIGN_CHUNK, num_warps=SMALL_SETUP_WARPS,
    )  # fmt: skip
    return sorted_ids, bexp, nb


def _scratch(shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
    """``torch.empty``; NaN-filled under ``POISON_SCRATCH`` (tests: no read of an unwritten entry)."""
    buf = torch.empty(shape, dtype=dtype, device=device)
    return buf.fill_(float("nan")) if POISON_SCRATCH else buf


_COUNTERS: dict[torch.device, torch.Tensor] = {}


def _arrival_counters(device: torch.device, n: int = 1) -> torch.Tensor:
    """Arrival counters: ``[0]`` for ``_router_setup_small_kernel``, ``[1:]`` for the column tiles of
    ``_moe_down_kernel`` with ``COMBINE``. Zero between launches (each last arrival resets its
    own), so one buffer per device serves every call and CUDA-graph replay (first call outside the
    capture). Trap: two MoE launches running at once on different streams of one device share it."""
    buf = _COUNTERS.get(device)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
        _COUNTERS[device] = buf
    return buf


def _setup_small_router(x, route: _Route, ids, w, e1: int, bm: int, out32: torch.Tensor):
    """``_setup_small`` with the router GEMM ``x route.weightᵀ`` folded into the same launch.

    Returns ``(sorted_ids, block_expert, NB, logits [T, E])`` (the logits only for tests)."""
    t, kt = ids.shape
    p = t * kt
    e, h = route.weight.shape
    sorted_ids, bexp, nb = _align_buffers(p, e1, bm, x.device)
    logits = _scratch((t, e), x.dtype, x.device)  # [T, E]
    has_sh = route.gate_weight is not None
    gates = _scratch((t if has_sh else 1,), torch.float32, x.device)  # [T]
    tp = triton.next_power_of_2(t)
    beg = ROUTER_EXPERTS_PER_PROGRAM
    bk = max(16, min(triton.next_power_of_2(h), ROUTER_TILE // (tp * beg)))
    pdl = use_pdl(x)
    _router_setup_small_kernel[(triton.cdiv(e, beg) + 1,)](
        x, route.weight, route.gate_weight if has_sh else x, logits, gates, w, ids, sorted_ids, bexp,
        out32, _arrival_counters(x.device),
        t, e, h, x.stride(0), route.weight.stride(0), p, e1, nb * bm, nb, out32.numel(),
        TOPK=route.top_k, KT=kt, KP=triton.next_power_of_2(kt), RENORM=route.renormalize,
        HAS_SHARED=has_sh, BE=triton.next_power_of_2(e), BH=1024,
        BM=bm, PP=triton.next_power_of_2(p), CH=ALIGN_CHUNK,
        TP=tp, BEG=beg, BK=bk, IS_BF16=x.dtype == torch.bfloat16, PDL=pdl, num_warps=SMALL_SETUP_WARPS,
        **pdl_launch(pdl),
    )  # fmt: skip
    return sorted_ids, bexp, nb, logits


def _fp8_parts(w: ExpertWeights):
    if w.w13.dtype != FP8_DTYPE:
        return False, None
    for name in ("w13_scale_inv", "w2_scale_inv", "w13_row_block", "w2_row_block"):
        if getattr(w, name) is None:
            raise ValueError(f"{name} is required for FP8 expert weights")
    if w.block_k % 16:
        raise ValueError(f"block_k must be a multiple of 16, got {w.block_k}")
    return True, w.block_k


def _check_experts(x: torch.Tensor, w: ExpertWeights) -> tuple[int, int, int]:
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"x must be [T, H] with unit last stride, got {tuple(x.shape)}")
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"x must be bfloat16 or float16 on the GPU, got {x.dtype}")
    h = x.shape[1]
    if w.w13.dim() != 3 or w.w13.shape[2] != h or w.w13.shape[1] % 2:
        raise ValueError(f"w13 must be [E, 2I, H={h}], got {tuple(w.w13.shape)}")
    e, two_i, _ = w.w13.shape
    i = two_i // 2
    if w.w2.shape != (e, h, i):
        raise ValueError(f"w2 must be [E={e}, H={h}, I={i}], got {tuple(w.w2.shape)}")
    for name in ("w13", "w2"):
        t = getattr(w, name)
        if t.stride(2) != 1 or t.device != x.device:
            raise ValueError(f"{name} must have unit last stride and live on {x.device}")
        if t.dtype not in (x.dtype, FP8_DTYPE):
            raise ValueError(f"{name} dtype {t.dtype} must be x's ({x.dtype}) or {FP8_DTYPE}")
    if w.w2.dtype != w.w13.dtype:
        raise ValueError(f"w13 ({w.w13.dtype}) and w2 ({w.w2.dtype}) must share a dtype")
    return e, h, i


def _run_experts(
    x,
    w: ExpertWeights,
    shared: SharedExpertWeights | None,
    topk_w=None,
    topk_ids=None,
    out32=None,
    route: _Route | None = None,
):
    """Align + both GEMMs + cast. Routing given as ``topk_w [T, KT]`` fp32 and ``topk_ids [T, KT]``
    (``E`` = shared), or done here from ``route`` (logits, or the router weight).

    With ``out32`` given, adds into it and returns it (fp32, no cast).
    """
    e, h, i = _check_experts(x, w)
    t = x.shape[0]
    kt = topk_ids.shape[1] if route is None else route.top_k + (route.gate_weight is not None)
    cast = out32 is None
    e1 = e + (1 if shared is not None else 0)
    p = t * kt
    if t == 0:
        return torch.zeros(0, h, dtype=x.dtype, device=x.device) if cast else out32
    fp8, block_k = _fp8_parts(w)
    kind = "fp8" if fp8 else "bf16"
    bm, (bn1, bk1, wa1, st1, swap_up), (bn2, bk2, wa2, st2) = _pick(p / min(e1, p), kind)
    pdl = use_pdl(x)
    if p <= SMALL_PAIRS:
        if route is not None:
            topk_w = torch.empty(t, kt, dtype=torch.float32, device=x.device)
            topk_ids = torch.empty(t, kt, dtype=torch.int64, device=x.device)
        combine = cast and SMALL_COMBINE  # the down GEMM's last programs sum the rows: no zeroing
        zt = torch.empty(0 if combine else t, h, dtype=torch.float32, device=x.device) if cast else out32[:0]
        if route is not None and route.weight is not None and t <= ROUTER_FUSED_MAX_T:
            sorted_ids, bexp, nb, _ = _setup_small_router(x, route, topk_ids, topk_w, e1, bm, zt)
        else:
            if route is not None and route.weight is not None:  # router GEMM on its own (cuBLAS)
                route = route._replace(logits=_logits(x, route), weight=None)
            sorted_ids, bexp, nb = _setup_small(x, route, topk_ids, topk_w, e1, bm, zt)
        out32 = zt if cast else out32
    else:
        combine = False
        if route is not None:
            logits = _logits(x, route)  # [T, E]
            topk_w, topk_ids = _route(logits, route.top_k, route.renormalize, x, route.gate_weight)
        if cast:
            out32 = torch.zeros(t, h, dtype=torch.float32, device=x.device)  # [T, H] combine target
        sorted_ids, bexp, nb = _align(topk_ids, e1, bm)
    if fp8:
        bk1, bk2 = min(bk1, block_k), min(bk2, block_k)
    inter_dtype = torch.float32 if PRECISE_INTER else x.dtype
    inter = torch.empty(p, i, dtype=inter_dtype, device=x.device)  # [P, I] silu(gate) * up per pair
    if fp8:
        s13, s2, rb13, rb2 = w.w13_scale_inv, w.w2_scale_inv, w.w13_row_block, w.w2_row_block
    else:
        s13, s2, rb13, rb2 = w.w13, w.w2, sorted_ids, sorted_ids  # unused placeholders
    sh = shared if shared is not None else None
    sh13 = sh.w13 if sh is not None else w.w13
    sh2 = sh.w2 if sh is not None else w.w2
    shs13 = sh.w13_scale_inv if (sh is not None and fp8) else s13
    shs2 = sh.w2_scale_inv if (sh is not None and fp8) else s2
    shrb13 = sh.w13_row_block if (sh is not None and fp8) else rb13
    shrb2 = sh.w2_row_block if (sh is not None and fp8) else rb2

    def ss(t3, d):  # stride of a scale tensor, 0 for placeholders
        return t3.stride(d) if fp8 else 0

    bi = triton.next_power_of_2(i)
    down_gemv = combine and t <= DOWN_GEMV_MAX_T and bi <= GEMV_ACC_MAX
    up_gemv = UP_GEMV[kind] if down_gemv else None
    if up_gemv is not None:
        bn4, bk4, wa4, st4 = up_gemv
        bk4 = min(bk4, triton.next_power_of_2(h))
        _moe_up_gemv_kernel[(p, triton.cdiv(i, bn4))](
            x, w.w13, s13, rb13, sh13, shs13, shrb13, topk_ids, inter,
            p, h, i, e, e1, w.w13.stride(0), w.w13.stride(1), ss(s13, 0), ss(s13, 1),
            sh13.stride(-2), ss(shs13, -2),
            W_FP8=fp8, BLOCK_K=block_k or 128, BN=bn4, BK=bk4, CH=_chunk(block_k, 8), PDL=pdl,
            num_warps=wa4, num_stages=st4, **pdl_launch(pdl),
        )  # fmt: skip
    else:
        _moe_up_kernel[(nb, triton.cdiv(i, bn1))](
            x, w.w13, s13, rb13, sh13, shs13, shrb13, sorted_ids, bexp, inter,
            p, h, i, e, x.stride(0), w.w13.stride(0), w.w13.stride(1), ss(s13, 0), ss(s13, 1),
            sh13.stride(-2), ss(shs13, -2),
            KT=kt, W_FP8=fp8, BLOCK_K=block_k or 128, BM=bm, BN=bn1, BK=bk1, F32=INTERPRET, PDL=pdl,
            SWAP=swap_up, num_warps=wa1, num_stages=st1, **pdl_launch(pdl),
        )  # fmt: skip
    if down_gemv:
        out = torch.empty(t, h, dtype=x.dtype, device=x.device)  # [1, H]
        bn3, wa3, st3 = DOWN_GEMV
        bn3 = min(bn3, GEMV_ACC_MAX // bi)  # the [BN, I] fp32 accumulator stays in registers
        _moe_down_gemv_kernel[(triton.cdiv(h, bn3),)](
            inter, w.w2, s2, rb2, sh2, shs2, shrb2, topk_w, topk_ids, out,
            p, h, i, e, e1, w.w2.stride(0), w.w2.stride(1), ss(s2, 0), ss(s2, 1),
            sh2.stride(-2), ss(shs2, -2),
            W_FP8=fp8, BLOCK_K=block_k or 128, ACT=TL_DTYPE[x.dtype], BN=bn3,
            BI=bi, CH=_chunk(block_k, bi), ACT_BF16=x.dtype == torch.bfloat16, PP=triton.next_power_of_2(p),
            IDS_IN_REGS=DOWN_GEMV_IDS_IN_REGS, PDL=pdl,
            num_warps=wa3, num_stages=st3, **pdl_launch(pdl),
        )  # fmt: skip
        return out
    n_tiles = triton.cdiv(h, bn2)
    if combine:
        out = torch.empty(t, h, dtype=x.dtype, device=x.device)  # [T, H]
        out32 = _scratch((p, h), torch.float32, x.device)  # [P, H] weighted pair rows
        cnt = _arrival_counters(x.device, 1 + n_tiles)[1:]  # one per column tile
    else:
        out, cnt = out32, bexp  # unused placeholders
    _moe_down_kernel[(nb, n_tiles)](
        inter, w.w2, s2, rb2, sh2, shs2, shrb2, sorted_ids, bexp, topk_w, out32, topk_ids, out, cnt,
        t, p, h, i, e, e1, w.w2.stride(0), w.w2.stride(1), ss(s2, 0), ss(s2, 1),
        sh2.stride(-2), ss(shs2, -2),
        KT=kt, W_FP8=fp8, BLOCK_K=block_k or 128, PRECISE=PRECISE_INTER, ACT=TL_DTYPE[x.dtype],
        BM=bm, BN=bn2, BK=bk2, F32=INTERPRET,
        COMBINE=combine, TB=triton.next_power_of_2(t), ACT_BF16=x.dtype == torch.bfloat16,
        num_warps=wa2, num_stages=st2,
    )  # fmt: skip
    if combine:
        return out
    return out32.to(x.dtype) if cast else out32


def fused_experts(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """Triton version of ``reference.fused_experts`` (bf16/fp16 weights): ``x [T, H]`` -> ``[T, H]``.

    Ids outside ``0..E-1`` are skipped (the reference raises instead; checking would sync).
    """
    if topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(f"topk_ids must be [T={x.shape[0]}, k], got {tuple(topk_ids.shape)}")
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(
            f"topk_weights shape {tuple(topk_weights.shape)} != topk_ids {tuple(topk_ids.shape)}"
        )
    tw = topk_weights.float().contiguous()  # [T, k]
    return _run_experts(x, ExpertWeights(w13, w2), None, tw, topk_ids.contiguous())


def _shared_foldable(w: ExpertWeights, sh: SharedExpertWeights) -> bool:
    i = w.w13.shape[1] // 2
    same_dtype = sh.w13.dtype == w.w13.dtype and sh.w2.dtype == w.w2.dtype
    fp8_ok = w.w13.dtype != FP8_DTYPE or (
        sh.w13_scale_inv is not None
        and sh.w2_scale_inv is not None
        and sh.w13_row_block is not None
        and sh.w2_row_block is not None
        and sh.block_k == w.block_k
        and sh.w13_scale_inv.stride(-1) == 1
        and sh.w2_scale_inv.stride(-1) == 1
    )
    return (
        same_dtype
        and fp8_ok
        and sh.w13.shape == (2 * i, w.w13.shape[2])
        and sh.w2.shape == (w.w2.shape[1], i)
        and sh.w13.stride(-1) == 1
        and sh.w2.stride(-1) == 1
    )


def _check_router(x: torch.Tensor, router_logits, router_weight, e: int) -> None:
    if (router_logits is None) == (router_weight is None):
        raise ValueError("pass exactly one of router_logits [T, E] and router_weight [E, H]")
    if router_logits is not None:
        if router_logits.dim() != 2 or router_logits.shape[0] != x.shape[0] or router_logits.stride(1) != 1:
            raise ValueError(f"router_logits must be [T={x.shape[0]}, E] with unit last stride")
        if router_logits.shape[1] != e:
            raise ValueError(f"router_logits has {router_logits.shape[1]} experts, w13 {e}")
        return
    if router_weight.shape != (e, x.shape[1]) or router_weight.stride(1) != 1:
        raise ValueError(
            f"router_weight must be [E={e}, H={x.shape[1]}] with unit last stride, "
            f"got {tuple(router_weight.shape)}"
        )
    if router_weight.dtype != x.dtype or router_weight.device != x.device:
        raise ValueError(f"router_weight must be {x.dtype} on {x.device}, got {router_weight.dtype}")


def fused_moe(
    x: torch.Tensor,
    router_logits: torch.Tensor | None,
    top_k: int,
    renormalize: bool,
    experts: ExpertWeights,
    shared: SharedExpertWeights | None = None,
    *,
    router_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton version of ``reference.fused_moe``: the whole sparse MoE block (from the router GEMM
    when ``router_weight [E, H]`` is given instead of ``router_logits [T, E]``)."""
    e, _, _ = _check_experts(x, experts)
    _check_router(x, router_logits, router_weight, e)
    if not 1 <= top_k <= e:
        raise ValueError(f"top_k must be in 1..E={e}, got {top_k}")
    if shared is None:
        route = _Route(router_logits, top_k, renormalize, None, router_weight)
        return _run_experts(x, experts, None, route=route)
    if shared.gate_weight.shape != (1, x.shape[1]) or shared.gate_weight.stride(-1) != 1:
        raise ValueError(
            f"shared gate_weight must be [1, H={x.shape[1]}], got {tuple(shared.gate_weight.shape)}"
        )
    if _shared_foldable(experts, shared):
        route = _Route(router_logits, top_k, renormalize, shared.gate_weight, router_weight)
        return _run_experts(x, experts, shared, route=route)
    # shared expert of another width or dtype: a second one-expert pass with the gate as its weight
    out32 = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    route = _Route(router_logits, top_k, renormalize, None, router_weight)
    out32 = _run_experts(x, experts, None, out32=out32, route=route)
    g, _ = _route(torch.zeros(x.shape[0], 1, device=x.device), 1, False, x, shared.gate_weight)
    one = ExpertWeights(
        shared.w13[None],
        shared.w2[None],
        None if shared.w13_scale_inv is None else shared.w13_scale_inv[None],
        None if shared.w2_scale_inv is None else shared.w2_scale_inv[None],
        shared.w13_row_block,
        shared.w2_row_block,
        shared.block_k,
    )
    sh_ids = torch.zeros(x.shape[0], 1, dtype=torch.int64, device=x.device)
    return _run_experts(x, one, None, g[:, 1:].contiguous(), sh_ids, out32).to(x.dtype)
