"""Triton GDN decode: one (gdn_decode) or T (gdn_decode_multi) tokens per sequence, state in a pool.

One program owns a [Dk, BV] tile of one (sequence, value head) state: it reads the tile once, runs
the T recurrence steps in registers (gating, l2norm of q/k and GVA fused) and writes the tile back
in place. Memory-bound: the state read + write is all the traffic that matters. No host syncs, so
both functions are CUDA-graph safe.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltaserve.ops.gdn import checks
from deltaserve.ops.gdn.triton_common import gate_scalar, logical_state_strides
from deltaserve.ops.pdl import gdc_launch_dependents, gdc_wait, pdl_launch, use_pdl


@triton.jit
def _tile_coords(
    HV: tl.constexpr, GROUP: tl.constexpr, DK: tl.constexpr, BV: tl.constexpr, NV: tl.constexpr,
    V_FAST: tl.constexpr,
):  # fmt: skip
    """This program's (sequence, value head, key head, key offsets [DK], value columns [BV]) for the
    grid (B * HV, NV = DV // BV), or with ``V_FAST`` the 1-D grid (B * HV * NV,) whose consecutive
    programs are one head's column tiles (launched together, so they share DRAM pages)."""
    if V_FAST:
        pid = tl.program_id(0)
        pid_bh = pid // NV
        i_v = pid % NV
    else:
        pid_bh = tl.program_id(0)
        i_v = tl.program_id(1)
    i_h = pid_bh % HV
    return pid_bh // HV, i_h, i_h // GROUP, tl.arange(0, DK), i_v * BV + tl.arange(0, BV)


@triton.jit
def _decode_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    a_ptr,
    b_ptr,
    alog_ptr,
    dtb_ptr,
    state_ptr,
    slot_ptr,
    o_ptr,
    inter_ptr,
    T,
    scale,
    sq_b,
    sq_t,
    sq_h,
    sk_b,
    sk_t,
    sk_h,
    sv_b,
    sv_t,
    sv_h,
    sa_b,
    sa_t,
    sb_b,
    sb_t,
    ss_s,
    ss_h,
    ss_k,
    ss_v,
    si_b,
    si_t,
    si_h,
    si_k,
    si_v,
    so_b,
    so_t,
    so_h,
    HV: tl.constexpr,
    GROUP: tl.constexpr,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BV: tl.constexpr,
    HAS_INTER: tl.constexpr,
    PDL: tl.constexpr,
    V_FAST: tl.constexpr,
):
    if PDL:  # see ops/pdl.py: nothing is read before the previous kernel completes
        gdc_wait()
    i_b, i_h, i_kh, offs_k, offs_v = _tile_coords(HV, GROUP, DK, BV, DV // BV, V_FAST)
    slot = tl.load(slot_ptr + i_b).to(tl.int64)
    o_base = o_ptr + i_b.to(tl.int64) * so_b + i_h * so_h + offs_v
    if slot < 0:
        # padding row: zero output, no state traffic
        for t in range(T):
            tl.store(o_base + t * so_t, tl.zeros([BV], dtype=o_ptr.dtype.element_ty))
        return
    s_ptrs = state_ptr + slot * ss_s + i_h * ss_h + offs_k[:, None] * ss_k + offs_v[None, :] * ss_v
    # The state tile is read once and written once, so both carry evict-first cache hints. H200, CUDA
    # graphs, % of copy bandwidth at B = 64 / 256 / 512: fp32 "kv" 91 / 98 / 99 -> 92 / 98 / 99, "vk"
    # 88 / 96 / 98 -> 91 / 96 / 97, bf16 "vk" 87 / 95 / 96 -> 90 / 98 / 97 (BENCHMARKS.md, 2026-11-28).
    s = tl.load(s_ptrs, eviction_policy="evict_first").to(tl.float32)  # [DK, BV]
    a_log = tl.load(alog_ptr + i_h).to(tl.float32)
    dt_b = tl.load(dtb_ptr + i_h).to(tl.float32)
    for t in range(T):
        q = tl.load(q_ptr + i_b.to(tl.int64) * sq_b + t * sq_t + i_kh * sq_h + offs_k).to(tl.float32)
        k = tl.load(k_ptr + i_b.to(tl.int64) * sk_b + t * sk_t + i_kh * sk_h + offs_k).to(tl.float32)
        v = tl.load(v_ptr + i_b.to(tl.int64) * sv_b + t * sv_t + i_h * sv_h + offs_v).to(tl.float32)
        a = tl.load(a_ptr + i_b.to(tl.int64) * sa_b + t * sa_t + i_h).to(tl.float32)
        b = tl.load(b_ptr + i_b.to(tl.int64) * sb_b + t * sb_t + i_h).to(tl.float32)
        g, beta = gate_scalar(a, b, a_log, dt_b)
        q = q * (tl.rsqrt(tl.sum(q * q, 0) + 1e-6) * scale)  # [DK]
        k = k * tl.rsqrt(tl.sum(k * k, 0) + 1e-6)  # [DK]
        # Both reductions read the incoming state, so they are independent (one pass over s):
        #   o = q^T (e^g s + k d^T) = e^g (q^T s) + (q.k) d,  d = beta (v - e^g (k^T s))
        eg = tl.exp(g)
        ks = tl.sum(s * k[:, None], 0)  # [BV]
        qs = tl.sum(s * q[:, None], 0)  # [BV]
        qk = tl.sum(q * k, 0)
        delta = (v - eg * ks) * beta  # [BV]
        o = eg * qs + qk * delta
        s = s * eg + k[:, None] * delta[None, :]
        tl.store(o_base + t * so_t, o.to(o_ptr.dtype.element_ty))
        if HAS_INTER:
            i_ptrs = (
                inter_ptr
                + i_b.to(tl.int64) * si_b
                + t * si_t
                + i_h * si_h
                + offs_k[:, None] * si_k
                + offs_v[None, :] * si_v
            )
            tl.store(i_ptrs, s.to(inter_ptr.dtype.element_ty))
    if PDL:
        gdc_launch_dependents()
    tl.store(s_ptrs, s.to(state_ptr.dtype.element_ty), eviction_policy="evict_first")


@triton.jit
def _decode_mma_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    a_ptr,
    b_ptr,
    alog_ptr,
    dtb_ptr,
    state_ptr,
    slot_ptr,
    o_ptr,
    scale,
    sq_b,
    sq_h,
    sk_b,
    sk_h,
    sv_b,
    sv_h,
    sa_b,
    sb_b,
    ss_s,
    ss_h,
    ss_k,
    ss_v,
    so_b,
    so_h,
    HV: tl.constexpr,
    GROUP: tl.constexpr,
    DK: tl.constexpr,
    DV: tl.constexpr,
    BV: tl.constexpr,
    PDL: tl.constexpr,
    V_FAST: tl.constexpr,
    SWAP: tl.constexpr,
    PAIR: tl.constexpr = False,
):
    """One token per sequence with a 16-bit state and q/k of the same dtype: k.S and q.S over Dk as one
    [16, DK] x [DK, BV] tensor-core product (rows 0 and 1 of the left operand: the raw k and q, which
    are exact in that dtype; the l2 norms scale the products afterwards). The plain kernel reduces
    over Dk across warps when Dk is the pool's strided axis ("kv"), which held bf16 "kv" pools to
    62-70 % of copy bandwidth on an H200; the product keeps each column's sum inside one warp. With
    ``SWAP`` the product is transposed, ``[BV, DK] x [DK, 16]``: the state tile is the left operand, so
    Hopper runs one m64n16 wgmma per warpgroup instead of m16n8 mma.sync tiles (80 registers instead of
    96 at BV 64, 4 warps; bf16 "kv" 84 -> 87 % of copy bandwidth at B=256 on an H200). With ``PAIR`` a
    program owns 2 * BV columns of the head and runs the product and update on each BV half in turn,
    after one set of loads, norms and gates."""
    if PDL:
        gdc_wait()
    NT: tl.constexpr = DV // (2 * BV) if PAIR else DV // BV  # column tiles per head
    i_b, i_h, i_kh, offs_k, offs_v = _tile_coords(HV, GROUP, DK, BV, NT, V_FAST)
    if PAIR:  # this program's tile is 2 * BV columns, handled as two BV halves
        offs_v = offs_v + (offs_v // BV) * BV
    i_b64 = i_b.to(tl.int64)
    k_row = k_ptr + i_b64 * sk_b + i_kh * sk_h
    q_row = q_ptr + i_b64 * sq_b + i_kh * sq_h
    rows = tl.arange(0, 16)[:, None]  # [16, 1]
    # Everything but the state is loaded first and the gates and norms (cross-warp reductions) are
    # computed while the state tile is in flight; loaded after the product, these added an L2 round trip
    # and the reductions to each program's path (bf16 "kv", H200, B=64: 81-83 -> 84-85 % of copy
    # bandwidth; BENCHMARKS.md, 2026-11-28 ~22:00 UTC).
    k_in = tl.load(k_row + offs_k)  # [DK]
    q_in = tl.load(q_row + offs_k)  # [DK]
    v_ptrs = v_ptr + i_b64 * sv_b + i_h * sv_h + offs_v
    v = tl.load(v_ptrs).to(tl.float32)  # [BV]
    if PAIR:
        v1 = tl.load(v_ptrs + BV).to(tl.float32)  # [BV]
    a = tl.load(a_ptr + i_b64 * sa_b + i_h).to(tl.float32)
    b = tl.load(b_ptr + i_b64 * sb_b + i_h).to(tl.float32)
    a_log = tl.load(alog_ptr + i_h).to(tl.float32)
    dt_b = tl.load(dtb_ptr + i_h).to(tl.float32)
    slot = tl.load(slot_ptr + i_b).to(tl.int64)
    o_ptrs = o_ptr + i_b64 * so_b + i_h * so_h + offs_v
    if slot < 0:  # padding row: zero output, no state traffic
        tl.store(o_ptrs, tl.zeros([BV], dtype=o_ptr.dtype.element_ty))
        if PAIR:
            tl.store(o_ptrs + BV, tl.zeros([BV], dtype=o_ptr.dtype.element_ty))
        return
    s_ptrs = state_ptr + slot * ss_s + i_h * ss_h + offs_k[:, None] * ss_k + offs_v[None, :] * ss_v
    s_raw = tl.load(s_ptrs, eviction_policy="evict_first")  # [DK, BV] (evict-first: see _decode_kernel)
    if PAIR:
        s_ptrs1 = s_ptrs + BV * ss_v
        s_raw1 = tl.load(s_ptrs1, eviction_policy="evict_first")  # [DK, BV] the next BV columns
    k = k_in.to(tl.float32)
    q = q_in.to(tl.float32)
    g, beta = gate_scalar(a, b, a_log, dt_b)
    rk = tl.rsqrt(tl.sum(k * k, 0) + 1e-6)
    rq = tl.rsqrt(tl.sum(q * q, 0) + 1e-6) * scale
    qk = tl.sum(q * k, 0)
    # rows 0 and 1: the raw k and q, exact in the pool's dtype (the norms scale the products)
    kq = tl.where(rows == 0, k_in[None, :], tl.where(rows == 1, q_in[None, :], 0.0))  # [16, DK]
    _mma_columns(s_raw, s_ptrs, kq, v, k, rk, rq, qk, g, beta, o_ptrs, SWAP, PDL and not PAIR)
    if PAIR:
        _mma_columns(s_raw1, s_ptrs1, kq, v1, k, rk, rq, qk, g, beta, o_ptrs + BV, SWAP, PDL)


@triton.jit
def _mma_columns(s_raw, s_ptrs, kq, v, k, rk, rq, qk, g, beta, o_ptrs, SWAP: tl.constexpr, PDL: tl.constexpr):
    """k.S and q.S of one [DK, BV] state tile as one tensor-core product, then o and the tile's update."""
    if SWAP:
        # the state tile as the MMA's left operand (both operands still pass through shared memory)
        prod_t = tl.dot(tl.trans(s_raw), tl.trans(kq))  # [BV, 16] fp32: column 0 S^T k, column 1 S^T q
        cols = tl.arange(0, 16)[None, :]  # [1, 16]
        ks_raw = tl.sum(tl.where(cols == 0, prod_t, 0.0), 1)  # [BV]
        qs_raw = tl.sum(tl.where(cols == 1, prod_t, 0.0), 1)  # [BV]
    else:
        rows = tl.arange(0, 16)[:, None]  # [16, 1]
        prod = tl.dot(kq, s_raw)  # [16, BV] fp32: row 0 k.S, row 1 q.S
        ks_raw = tl.sum(tl.where(rows == 0, prod, 0.0), 0)  # [BV]
        qs_raw = tl.sum(tl.where(rows == 1, prod, 0.0), 0)  # [BV]
    ks = ks_raw * rk  # [BV]
    qs = qs_raw * rq  # [BV]
    eg = tl.exp(g)
    delta = (v - eg * ks) * beta  # [BV]
    o = eg * qs + (qk * rq * rk) * delta  # [BV]
    tl.store(o_ptrs, o.to(o_ptrs.dtype.element_ty))
    if PDL:
        gdc_launch_dependents()
    s = s_raw.to(tl.float32) * eg + (k * rk)[:, None] * delta[None, :]  # [DK, BV]
    tl.store(s_ptrs, s.to(s_ptrs.dtype.element_ty), eviction_policy="evict_first")


PAIR_MIN_TILES = 4096  # (sequence, value head) tiles from which an MMA program takes two column tiles


def _decode_config(n_seq: int, hv: int, state_layout: str, wide_state: bool, mma: bool) -> tuple[int, ...]:
    """(BV, num_warps[, tensor-core reduction[, V_FAST grid[, state tile as the MMA's left operand[, two
    BV-column tiles per MMA program]]]]) from CUDA-graph sweeps (scripts/gdn_tune.py graph / mma / order /
    order2 / swap / pair; BENCHMARKS.md): one-warp programs over 16 state columns for latency at tiny
    batch; when bandwidth-bound, % of copy bandwidth on an H200 at B = 64 / 256 / 512:

    - fp32 pools (`wide_state`): 64-column, 4-warp tiles, a head's tiles launched back to back (V_FAST):
      "kv" 87 / 94 / 96 -> 89 / 97 / 98, "vk" 84 / 92 / 93 -> 87 / 95 / 97 (with the evict-first state
      hints, across runs: "kv" 92-95 / 97-100 / 98-100, "vk" 91-93 / 95-97 / 96-99);
    - 16-bit "kv" pools with `mma` (one token, q/k of the pool's dtype): `_decode_mma_kernel`, (64, 4),
      the state tile as the left operand (wgmma m64n16), V_FAST: 84-85 / 90-91 / 91 with the
      evict-first state hints and the small loads first (plain grid: 77 / 87 / 90 before the hints,
      78 / 84 / 86 with them; right operand, i.e. mma.sync m16n8: 76 / 84 / 86); from B * Hv = 4096
      (B=128 at Hv=32) a program takes two such tiles of one head, sharing the loads, norms and gates
      (146 instead of 87 registers in the local sm_90 compile): 82-85 / 90-93 / 91-94 against 83-85 /
      89-91 / 90-91, and 87-90 against 86-89 at B=128 (two runs), so not at B=64;
    - 16-bit "vk" pools: one-warp 16-row tiles, V_FAST, plain kernel: 86 / 93 / 95, 89-91 / 96-99 /
      94-98 with the hints (MMA kernel, plain grid: 84 / 86 / 85)."""
    if n_seq * hv < 256:
        return 16, 1
    if wide_state:
        return 64, 4, False, True
    if state_layout == "vk":
        return 16, 1, False, True
    if not mma:
        return 64, 4
    return (64, 4, True, True, True, True) if n_seq * hv >= PAIR_MIN_TILES else (64, 4, True, True, True)


def _launch(q, k, v, a, b, A_log, dt_bias, state, state_slots, inter, state_layout, scale, config=None):
    """q, k [B, T, Hk, Dk]; v [B, T, Hv, Dv]; a, b [B, T, Hv] (views allowed)."""
    nb, t, hk, dk = q.shape
    hv, dv = v.shape[-2:]
    for name, x in (("q", q), ("k", k), ("v", v), ("a", a), ("b", b), ("A_log", A_log), ("dt_bias", dt_bias)):
        checks.check_inner_contiguous(name, x)
    if dk & (dk - 1) or dv & (dv - 1) or dv < 16:
        raise ValueError(f"v: Dk={dk} and Dv={dv} must be powers of two (Dv >= 16) for the Triton kernel")
    if scale is None:
        scale = dk**-0.5
    o = torch.empty(nb, t, hv, dv, dtype=q.dtype, device=q.device)
    # the tensor-core reduction: one token, 16-bit pool, q/k exact in the pool's dtype, Dk >= 16 (an MMA
    # operand's K)
    mma_ok = t == 1 and inter is None and dk >= 16 and q.dtype == k.dtype == state.dtype != torch.float32
    cfg = (
        config
        if config is not None
        else _decode_config(nb, hv, state_layout, state.element_size() >= 4, mma_ok)
    )
    bv, warps = min(cfg[0], dv), cfg[1]
    v_fast = len(cfg) > 3 and bool(cfg[3])
    mma = len(cfg) > 2 and bool(cfg[2]) and mma_ok
    pair = mma and len(cfg) > 5 and bool(cfg[5]) and dv >= 2 * bv
    nt = dv // (2 * bv) if pair else dv // bv  # programs per head (the kernels' NT / NV)
    grid = (nb * hv * nt,) if v_fast else (nb * hv, nt)
    ss = logical_state_strides(state, state_layout, 1)
    pdl = use_pdl(q)
    if mma:
        _decode_mma_kernel[grid](
            q, k, v, a, b, A_log, dt_bias, state, state_slots, o, scale,
            q.stride(0), q.stride(2), k.stride(0), k.stride(2), v.stride(0), v.stride(2), a.stride(0), b.stride(0),
            *ss,
            o.stride(0), o.stride(2),
            HV=hv, GROUP=hv // hk, DK=dk, DV=dv, BV=bv, PDL=pdl, V_FAST=v_fast, SWAP=len(cfg) > 4 and bool(cfg[4]),
            PAIR=pair, num_warps=warps, **pdl_launch(pdl),
        )  # fmt: skip
        return o
    if inter is not None:
        si = logical_state_strides(inter, state_layout, 2)
    else:
        si = (0, 0, 0, 0, 0)
    _decode_kernel[grid](
        q, k, v, a, b, A_log, dt_bias, state, state_slots, o, inter if inter is not None else o, t, scale,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        a.stride(0), a.stride(1),
        b.stride(0), b.stride(1),
        *ss,
        *si,
        o.stride(0), o.stride(1), o.stride(2),
        HV=hv, GROUP=hv // hk, DK=dk, DV=dv, BV=bv, HAS_INTER=inter is not None, PDL=pdl, V_FAST=v_fast,
        num_warps=warps, **pdl_launch(pdl),
    )  # fmt: skip
    return o


def gdn_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    *,
    state: torch.Tensor,
    state_slots: torch.Tensor,
    state_layout: str = "kv",
    scale: float | None = None,
    _config: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """One decode token per sequence (Triton); see deltaserve.ops.gdn.gdn_decode for the contract.

    q, k [B, Hk, Dk]; v [B, Hv, Dv]; a, b [B, Hv]; returns o [B, Hv, Dv] in q.dtype.
    """
    checks.check_decode(q, k, v, a, b, A_log, dt_bias, state, state_slots, state_layout, 1)
    o = _launch(
        q[:, None], k[:, None], v[:, None], a[:, None], b[:, None], A_log, dt_bias, state, state_slots,
        None, state_layout, scale, _config,
    )  # fmt: skip
    return o[:, 0]


def gdn_decode_multi(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    *,
    state: torch.Tensor,
    state_slots: torch.Tensor,
    intermediate_states: torch.Tensor | None = None,
    state_layout: str = "kv",
    scale: float | None = None,
    _config: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """T tokens per sequence (Triton); see deltaserve.ops.gdn.gdn_decode_multi for the contract.

    q, k [B, T, Hk, Dk]; v [B, T, Hv, Dv]; a, b [B, T, Hv]; returns o [B, T, Hv, Dv] in q.dtype.
    """
    checks.check_decode(
        q, k, v, a, b, A_log, dt_bias, state, state_slots, state_layout, 2, intermediate_states
    )
    return _launch(
        q, k, v, a, b, A_log, dt_bias, state, state_slots, intermediate_states, state_layout, scale, _config
    )
