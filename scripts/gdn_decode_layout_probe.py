"""Probe: bf16 "kv" GDN decode layouts against the shipped kernel (one GPU run).

    python3 scripts/gdn_decode_layout_probe.py OUT.json [CONFIG ...]

The shipped MMA kernel holds a whole [Dk, BV] state tile in registers between the k.S / q.S reductions
and the update (80 registers at (64, 4): 6 programs per SM, 34 % occupancy at B=64 in ncu), and its
sums over Dk (the pool's strided axis) go through shared memory and barriers.

- ``("tp", BV, num_warps, DKC, MODE, EVICT_LAST_PASS1)``, two passes: pass 1 streams the tile in DKC-row
  chunks keeping only the reductions' running sums (elementwise [DKC, BV] sums, MODE 0, or one
  [16, DKC] x [DKC, BV] tensor-core product per chunk, MODE 1); pass 2 reads each chunk again (an L1/L2
  hit), updates it and writes it back. Fewer registers, more programs per SM. H200: 46-88 us at B=64
  against the shipped 39 (BENCHMARKS.md, 2026-11-29 ~14:55 UTC): the chunks' round trips serialise.
- ``("gl", NW, WC, SPTV)``, Gluon with an explicit layout: each of the NW warps owns WC whole columns
  of the tile (lanes along Dk, SPTV-element vectors along Dv), so every sum over Dk is warp shuffles:
  no shared memory and no barrier in the kernel. H200: 46-93 us at B=64.
- ``("gx", BV, NW, SPTV)``, Gluon: warp w owns rows w * DK / NW onward and reads whole 2 * BV-byte row
  segments; the NW partial sums meet once in shared memory (one barrier). H200: best 40.6-42.1 us at
  B=64 (32 columns, 2 warps) against the shipped 39.0-39.6.

Each config is checked against the shipped kernel (outputs and states, padding slot untouched), then
timed in CUDA graphs at B = 64 / 128 / 256 / 512 with the shipped kernel and the same-bytes `x*1` in
the same process. Gluon needs Triton >= 3.6 and a GPU.
"""

# ruff: noqa: B023 - the timing closures run inside the loop iteration that builds them
from __future__ import annotations

import ast
import json
import math
import sys

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from deltaserve.bench import op_gdn
from deltaserve.bench.common import device_record, measure_copy_bw, time_cuda_graph
from deltaserve.ops.gdn.decode import _tile_coords, gdn_decode
from deltaserve.ops.gdn.triton_common import gate_scalar, logical_state_strides
from deltaserve.ops.pdl import gdc_launch_dependents, gdc_wait, pdl_launch, use_pdl

D = 128


@triton.jit
def _twopass_kernel(
    q_ptr, k_ptr, v_ptr, a_ptr, b_ptr, alog_ptr, dtb_ptr, state_ptr, slot_ptr, o_ptr, scale,
    sq_b, sq_h, sk_b, sk_h, sv_b, sv_h, sa_b, sb_b, ss_s, ss_h, ss_k, ss_v, so_b, so_h,
    HV: tl.constexpr, GROUP: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr,
    DKC: tl.constexpr, MODE: tl.constexpr, EV1: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    if PDL:
        gdc_wait()
    i_b, i_h, i_kh, offs_k, offs_v = _tile_coords(HV, GROUP, DK, BV, DV // BV, True)
    i_b64 = i_b.to(tl.int64)
    k_row = k_ptr + i_b64 * sk_b + i_kh * sk_h
    q_row = q_ptr + i_b64 * sq_b + i_kh * sq_h
    k_in = tl.load(k_row + offs_k)  # [DK]
    q_in = tl.load(q_row + offs_k)  # [DK]
    v = tl.load(v_ptr + i_b64 * sv_b + i_h * sv_h + offs_v).to(tl.float32)  # [BV]
    a = tl.load(a_ptr + i_b64 * sa_b + i_h).to(tl.float32)
    b = tl.load(b_ptr + i_b64 * sb_b + i_h).to(tl.float32)
    a_log = tl.load(alog_ptr + i_h).to(tl.float32)
    dt_b = tl.load(dtb_ptr + i_h).to(tl.float32)
    slot = tl.load(slot_ptr + i_b).to(tl.int64)
    o_ptrs = o_ptr + i_b64 * so_b + i_h * so_h + offs_v
    if slot < 0:
        tl.store(o_ptrs, tl.zeros([BV], dtype=o_ptr.dtype.element_ty))
        return
    s_base = state_ptr + slot * ss_s + i_h * ss_h + offs_v[None, :] * ss_v  # [1, BV]
    k = k_in.to(tl.float32)
    q = q_in.to(tl.float32)
    g, beta = gate_scalar(a, b, a_log, dt_b)
    rk = tl.rsqrt(tl.sum(k * k, 0) + 1e-6)
    rq = tl.rsqrt(tl.sum(q * q, 0) + 1e-6) * scale
    qk = tl.sum(q * k, 0)
    eg = tl.exp(g)
    offs_c = tl.arange(0, DKC)
    if MODE == 0:
        acc_k = tl.zeros([DKC, BV], dtype=tl.float32)
        acc_q = tl.zeros([DKC, BV], dtype=tl.float32)
        for c in tl.static_range(DK // DKC):
            rows = c * DKC + offs_c  # [DKC]
            if EV1:
                s_c = tl.load(s_base + rows[:, None] * ss_k, eviction_policy="evict_last").to(tl.float32)
            else:
                s_c = tl.load(s_base + rows[:, None] * ss_k).to(tl.float32)  # [DKC, BV]
            kc = tl.load(k_row + rows).to(tl.float32)  # [DKC]
            qc = tl.load(q_row + rows).to(tl.float32)  # [DKC]
            acc_k += s_c * kc[:, None]
            acc_q += s_c * qc[:, None]
        ks_raw = tl.sum(acc_k, 0)  # [BV]
        qs_raw = tl.sum(acc_q, 0)  # [BV]
    else:
        r16 = tl.arange(0, 16)[:, None]  # [16, 1]
        acc = tl.zeros([16, BV], dtype=tl.float32)
        for c in tl.static_range(DK // DKC):
            rows = c * DKC + offs_c  # [DKC]
            if EV1:
                s_c = tl.load(s_base + rows[:, None] * ss_k, eviction_policy="evict_last")
            else:
                s_c = tl.load(s_base + rows[:, None] * ss_k)  # [DKC, BV]
            kc = tl.load(k_row + rows)  # [DKC]
            qc = tl.load(q_row + rows)  # [DKC]
            kq = tl.where(r16 == 0, kc[None, :], tl.where(r16 == 1, qc[None, :], 0.0))  # [16, DKC]
            kq = kq.to(s_c.dtype)
            acc = tl.dot(kq, s_c, acc)
        ks_raw = tl.sum(tl.where(r16 == 0, acc, 0.0), 0)  # [BV]
        qs_raw = tl.sum(tl.where(r16 == 1, acc, 0.0), 0)  # [BV]
    ks = ks_raw * rk
    qs = qs_raw * rq
    delta = (v - eg * ks) * beta  # [BV]
    o = eg * qs + (qk * rq * rk) * delta  # [BV]
    tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty))
    if PDL:
        gdc_launch_dependents()
    for c in tl.static_range(DK // DKC):
        rows = c * DKC + offs_c  # [DKC]
        p = s_base + rows[:, None] * ss_k  # [DKC, BV]
        s_c = tl.load(p, eviction_policy="evict_first").to(tl.float32)
        kc = tl.load(k_row + rows).to(tl.float32) * rk  # [DKC]
        s_c = s_c * eg + kc[:, None] * delta[None, :]
        tl.store(p, s_c.to(state_ptr.dtype.element_ty), eviction_policy="evict_first")


@gluon.jit
def _gl_gdc_wait():
    gl.inline_asm_elementwise(
        "griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1
    )


@gluon.jit
def _gl_gdc_launch_dependents():
    gl.inline_asm_elementwise(
        "griddepcontrol.launch_dependents; // dummy $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1
    )


@gluon.jit
def _gl_program(HV: gl.constexpr, GROUP: gl.constexpr, NV: gl.constexpr):
    """(sequence as int64, sequence, value head, key head, column tile) of this program (V_FAST order)."""
    pid = gl.program_id(0)
    pid_bh = pid // NV
    i_h = pid_bh % HV
    i_b = pid_bh // HV
    return i_b.to(gl.int64), i_b, i_h, i_h // GROUP, pid % NV


@gluon.jit
def _gl_gates(a_ptr, b_ptr, alog_ptr, dtb_ptr, i_b64, i_h, sa_b, sb_b):
    """exp(g) and beta of one (sequence, value head), fp32 (the gating of ``triton_common.gate_scalar``)."""
    a = gl.load(a_ptr + i_b64 * sa_b + i_h).to(gl.float32)
    b = gl.load(b_ptr + i_b64 * sb_b + i_h).to(gl.float32)
    x = a + gl.load(dtb_ptr + i_h).to(gl.float32)
    sp = gl.where(x > 20.0, x, gl.log(1.0 + gl.exp(gl.minimum(x, 20.0))))
    return gl.exp(-gl.exp(gl.load(alog_ptr + i_h).to(gl.float32)) * sp), 1.0 / (1.0 + gl.exp(-b))


@gluon.jit
def _warpcols_kernel(
    q_ptr, k_ptr, v_ptr, a_ptr, b_ptr, alog_ptr, dtb_ptr, state_ptr, slot_ptr, o_ptr, scale,
    sq_b, sq_h, sk_b, sk_h, sv_b, sv_h, sa_b, sb_b, ss_s, ss_h, ss_k, ss_v, so_b, so_h,
    HV: gl.constexpr, GROUP: gl.constexpr, DK: gl.constexpr, DV: gl.constexpr, NW: gl.constexpr,
    WC: gl.constexpr, SPTV: gl.constexpr, PDL: gl.constexpr,
):  # fmt: skip
    # each warp owns WC whole columns of the [DK, BV] tile: the sums over Dk stay inside the warp
    L: gl.constexpr = gl.BlockedLayout([1, SPTV], [32 // (WC // SPTV), WC // SPTV], [1, NW], [1, 0])
    LK: gl.constexpr = gl.SliceLayout(1, L)
    LV: gl.constexpr = gl.SliceLayout(0, L)
    BV: gl.constexpr = NW * WC
    NV: gl.constexpr = DV // BV
    if PDL:
        _gl_gdc_wait()
    i_b64, i_b, i_h, i_kh, i_v = _gl_program(HV, GROUP, NV)
    offs_k = gl.arange(0, DK, layout=LK)
    offs_v = i_v * BV + gl.arange(0, BV, layout=LV)
    k = gl.load(k_ptr + i_b64 * sk_b + i_kh * sk_h + offs_k).to(gl.float32)  # [DK]
    q = gl.load(q_ptr + i_b64 * sq_b + i_kh * sq_h + offs_k).to(gl.float32)  # [DK]
    v = gl.load(v_ptr + i_b64 * sv_b + i_h * sv_h + offs_v).to(gl.float32)  # [BV]
    eg, beta = _gl_gates(a_ptr, b_ptr, alog_ptr, dtb_ptr, i_b64, i_h, sa_b, sb_b)
    slot = gl.load(slot_ptr + i_b).to(gl.int64)
    o_ptrs = o_ptr + i_b64 * so_b + i_h * so_h + offs_v
    if slot < 0:
        gl.store(o_ptrs, gl.zeros([BV], o_ptr.dtype.element_ty, LV))
        return
    s_ptrs = (
        state_ptr
        + slot * ss_s
        + i_h * ss_h
        + gl.expand_dims(offs_k, 1) * ss_k
        + gl.expand_dims(offs_v, 0) * ss_v
    )
    s = gl.load(s_ptrs, eviction_policy="evict_first").to(gl.float32)  # [DK, BV]
    rk = gl.rsqrt(gl.sum(k * k, 0) + 1e-6)
    rq = gl.rsqrt(gl.sum(q * q, 0) + 1e-6) * scale
    qk = gl.sum(q * k, 0)
    kn = k * rk  # [DK]
    ks = gl.sum(s * gl.expand_dims(kn, 1), 0)  # [BV]
    qs = gl.sum(s * gl.expand_dims(q, 1), 0) * rq  # [BV]
    delta = (v - eg * ks) * beta  # [BV]
    o = eg * qs + (qk * rq * rk) * delta  # [BV]
    gl.store(o_ptrs, o.to(o_ptr.dtype.element_ty))
    if PDL:
        _gl_gdc_launch_dependents()
    s = s * eg + gl.expand_dims(kn, 1) * gl.expand_dims(delta, 0)  # [DK, BV]
    gl.store(s_ptrs, s.to(state_ptr.dtype.element_ty), eviction_policy="evict_first")


@gluon.jit
def _exchange_kernel(
    q_ptr, k_ptr, v_ptr, a_ptr, b_ptr, alog_ptr, dtb_ptr, state_ptr, slot_ptr, o_ptr, scale,
    sq_b, sq_h, sk_b, sk_h, sv_b, sv_h, sa_b, sb_b, ss_s, ss_h, ss_k, ss_v, so_b, so_h,
    HV: gl.constexpr, GROUP: gl.constexpr, DK: gl.constexpr, DV: gl.constexpr, BV: gl.constexpr,
    NW: gl.constexpr, SPTV: gl.constexpr, PDL: gl.constexpr,
):  # fmt: skip
    # The [DK, BV] tile as [NW, DK / NW, BV]: warp w owns rows w * R .. w * R + R - 1 and reads whole
    # 2 * BV-byte row segments (the shipped kernel's access pattern). Each warp sums its rows with
    # shuffles; the NW partial sums meet once in shared memory (one barrier).
    R: gl.constexpr = DK // NW
    LANES_V: gl.constexpr = BV // SPTV
    L3: gl.constexpr = gl.BlockedLayout([1, 1, SPTV], [1, 32 // LANES_V, LANES_V], [NW, 1, 1], [2, 1, 0])
    LWR: gl.constexpr = gl.SliceLayout(2, L3)  # [NW, R]
    LWV: gl.constexpr = gl.SliceLayout(1, L3)  # [NW, BV]
    LV: gl.constexpr = gl.SliceLayout(0, LWV)  # [BV]
    SMEM: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    LSUM: gl.constexpr = gl.BlockedLayout([NW, SPTV], [32 // LANES_V, LANES_V], [NW, 1], [1, 0])  # [NW, BV]
    NV: gl.constexpr = DV // BV
    if PDL:
        _gl_gdc_wait()
    i_b64, i_b, i_h, i_kh, i_v = _gl_program(HV, GROUP, NV)
    kidx = gl.expand_dims(gl.arange(0, NW, layout=gl.SliceLayout(1, LWR)), 1) * R + gl.expand_dims(
        gl.arange(0, R, layout=gl.SliceLayout(0, LWR)), 0
    )  # [NW, R]
    kidx3 = gl.expand_dims(kidx, 2)  # [NW, R, 1]
    offs_v = i_v * BV + gl.arange(0, BV, layout=LV)  # [BV]
    v3 = gl.expand_dims(gl.expand_dims(offs_v, 0), 1)  # [1, 1, BV]
    k3 = gl.load(k_ptr + i_b64 * sk_b + i_kh * sk_h + kidx3).to(gl.float32)  # [NW, R, 1]
    q3 = gl.load(q_ptr + i_b64 * sq_b + i_kh * sq_h + kidx3).to(gl.float32)  # [NW, R, 1]
    v = gl.load(v_ptr + i_b64 * sv_b + i_h * sv_h + offs_v).to(gl.float32)  # [BV]
    eg, beta = _gl_gates(a_ptr, b_ptr, alog_ptr, dtb_ptr, i_b64, i_h, sa_b, sb_b)
    slot = gl.load(slot_ptr + i_b).to(gl.int64)
    o_ptrs = o_ptr + i_b64 * so_b + i_h * so_h + offs_v
    if slot < 0:
        gl.store(o_ptrs, gl.zeros([BV], o_ptr.dtype.element_ty, LV))
        return
    s_ptrs = state_ptr + slot * ss_s + i_h * ss_h + kidx3 * ss_k + v3 * ss_v  # [NW, R, BV]
    s_raw = gl.load(s_ptrs, eviction_policy="evict_first")  # [NW, R, BV] bf16
    s = s_raw.to(gl.float32)  # [NW, R, BV]
    if NW == 1:  # one warp: every sum is shuffles, nothing to exchange
        ks = gl.sum(gl.sum(s * k3, 1), 0)  # [BV]
        qs = gl.sum(gl.sum(s * q3, 1), 0)  # [BV]
        kk = gl.sum(gl.sum(gl.sum(k3 * k3, 2), 1), 0)
        qq = gl.sum(gl.sum(gl.sum(q3 * q3, 2), 1), 0)
        qk = gl.sum(gl.sum(gl.sum(q3 * k3, 2), 1), 0)
    else:
        # this warp's k.k, q.q, q.k in columns 0-2 of one more [NW, BV] partial
        col = gl.expand_dims(gl.arange(0, BV, layout=gl.SliceLayout(0, LWV)), 0)  # [1, BV]
        stats = gl.where(
            col == 0, gl.sum(k3 * k3, 1), gl.where(col == 1, gl.sum(q3 * q3, 1), gl.sum(q3 * k3, 1))
        )  # [NW, BV]
        b_ks = gl.allocate_shared_memory(gl.float32, [NW, BV], SMEM, gl.sum(s * k3, 1))  # this warp's k.S
        b_qs = gl.allocate_shared_memory(gl.float32, [NW, BV], SMEM, gl.sum(s * q3, 1))  # this warp's q.S
        b_st = gl.allocate_shared_memory(gl.float32, [NW, BV], SMEM, stats)
        gl.thread_barrier()
        # read back with the NW partials of a column in one thread: the sums are in-thread adds
        ks = gl.convert_layout(gl.sum(b_ks.load(LSUM), 0), LV, assert_trivial=True)  # [BV]
        qs = gl.convert_layout(gl.sum(b_qs.load(LSUM), 0), LV, assert_trivial=True)
        st = gl.convert_layout(gl.sum(b_st.load(LSUM), 0), LV, assert_trivial=True)
        cv = gl.arange(0, BV, layout=LV)
        kk = gl.sum(gl.where(cv == 0, st, 0.0), 0)
        qq = gl.sum(gl.where(cv == 1, st, 0.0), 0)
        qk = gl.sum(gl.where(cv == 2, st, 0.0), 0)
    rk = gl.rsqrt(kk + 1e-6)
    rq = gl.rsqrt(qq + 1e-6) * scale
    delta = (v - eg * ks * rk) * beta  # [BV]
    o = eg * qs * rq + (qk * rq * rk) * delta  # [BV]
    gl.store(o_ptrs, o.to(o_ptr.dtype.element_ty))
    if PDL:
        _gl_gdc_launch_dependents()
    dd3 = gl.expand_dims(gl.expand_dims(rk * delta, 0), 1)  # [1, 1, BV]
    s = s * eg + k3 * dd3  # [NW, R, BV]
    gl.store(s_ptrs, s.to(state_ptr.dtype.element_ty), eviction_policy="evict_first")


def variant_decode(q, k, v, a, b, A_log, dt_bias, state, slots, cfg, scale=None):
    """The probe variant that ``cfg`` names, on q, k [B, Hk, Dk]; v [B, Hv, Dv]; a, b [B, Hv] and a "kv"
    pool [S, Hv, Dk, Dv]: ("tp", BV, num_warps, DKC, MODE, EV1), ("gl", NW, WC, SPTV) or ("gx", BV, NW, SPTV)."""
    nb, hk, dk = q.shape
    hv, dv = v.shape[-2:]
    if cfg[0] == "tp":
        kernel, bv, warps = _twopass_kernel, cfg[1], cfg[2]
        consts = dict(BV=bv, DKC=cfg[3], MODE=cfg[4], EV1=cfg[5])
    elif cfg[0] == "gl":
        kernel, bv, warps = _warpcols_kernel, cfg[1] * cfg[2], cfg[1]
        consts = dict(NW=cfg[1], WC=cfg[2], SPTV=cfg[3])
    else:
        kernel, bv, warps = _exchange_kernel, cfg[1], cfg[2]
        consts = dict(BV=bv, NW=warps, SPTV=cfg[3])
    o = torch.empty(nb, hv, dv, dtype=q.dtype, device=q.device)
    pdl = use_pdl(q)
    kernel[(nb * hv * (dv // bv),)](
        q, k, v, a, b, A_log, dt_bias, state, slots, o, dk**-0.5 if scale is None else scale,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), a.stride(0), b.stride(0),
        *logical_state_strides(state, "kv", 1), o.stride(0), o.stride(1),
        HV=hv, GROUP=hv // hk, DK=dk, DV=dv, PDL=pdl, num_warps=warps, **consts, **pdl_launch(pdl),
    )  # fmt: skip
    return o


def _check(cfg) -> dict:
    nb, hk, hv = 5, 16, 32
    x = op_gdn.make_inputs(nb, hk, hv, seed=3)
    pool = (torch.randn(nb + 2, hv, D, D, device="cuda") * 0.1).to(torch.bfloat16)
    slots = torch.tensor([1, 2, -1, 4, 3], device="cuda", dtype=torch.int32)
    ref_pool, my_pool = pool.clone(), pool.clone()
    args = (x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"])
    o_ref = gdn_decode(*args, state=ref_pool, state_slots=slots)
    o = variant_decode(*args, my_pool, slots, cfg)
    torch.cuda.synchronize()

    def rel(x_, y_):
        return ((x_.float() - y_.float()).norm() / y_.float().norm().clamp_min(1e-30)).item()

    return {
        "o_rel": rel(o, o_ref),
        "state_rel": rel(my_pool, ref_pool),
        "untouched": bool(torch.equal(my_pool[[0, 5, 6]], pool[[0, 5, 6]])),
        "finite": bool(torch.isfinite(o).all()),
    }


def main() -> None:
    cfgs = [ast.literal_eval(c) for c in sys.argv[2:]] or [
        ("gl", 4, 16, 8), ("gl", 8, 16, 8), ("gl", 8, 8, 8), ("gl", 4, 8, 8), ("gl", 2, 8, 8), ("gl", 16, 8, 8),
        ("gl", 4, 8, 4), ("gl", 8, 8, 4), ("gl", 4, 16, 4), ("tp", 64, 4, 32, 1, 0),
    ]  # fmt: skip
    bw = measure_copy_bw()
    rows: list = [device_record(), {"copy_bw_GBps": bw / 1e9}]
    print(f"copy bw {bw / 1e9:.0f} GB/s", flush=True)
    ok_cfgs = []
    for cfg in cfgs:
        try:
            chk = _check(cfg)
        except Exception as exc:  # a config that does not compile is a result, not a crash
            chk = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        rows.append({"cfg": cfg, "check": chk})
        print(cfg, chk, flush=True)
        if "error" not in chk and chk["o_rel"] < 2e-2 and chk["state_rel"] < 2e-2 and chk["untouched"]:
            ok_cfgs.append(cfg)
    hk, hv = 16, 32
    for rnd in range(2):
        for nb in (64, 128, 256, 512):
            per_layer = nb * hv * D * D * 2
            n_layers = int(min(36, max(2, math.ceil(160e6 / per_layer))))
            x = op_gdn.make_inputs(nb, hk, hv)
            pools = [
                (torch.randn(nb + 1, hv, D, D, device="cuda") * 0.1).to(torch.bfloat16)
                for _ in range(n_layers)
            ]
            slots = torch.arange(1, nb + 1, device="cuda", dtype=torch.int32)
            args = (x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"])
            state_bytes = 2 * per_layer

            def pct(ms):
                return round(100 * state_bytes / (ms * 1e-3) / bw, 1)

            res = {"round": rnd, "B": nb}
            ship = time_cuda_graph([lambda p=p: gdn_decode(*args, state=p, state_slots=slots) for p in pools])
            res["shipped_us"], res["shipped_pct"] = ship * 1e3, pct(ship)
            dst = torch.empty_like(pools[0][1:])
            cp = time_cuda_graph([lambda p=p, d=dst: torch.mul(p[1:], 1, out=d) for p in pools])
            res["x1_us"], res["x1_pct"] = cp * 1e3, pct(cp)
            for cfg in ok_cfgs:
                t = time_cuda_graph([lambda p=p: variant_decode(*args, p, slots, cfg) for p in pools])
                res[str(cfg)] = (round(t * 1e3, 2), pct(t))
            rows.append(res)
            print(json.dumps(res), flush=True)
            del pools, dst
            torch.cuda.empty_cache()
    with open(sys.argv[1], "w") as f:
        json.dump(rows, f, indent=1, default=str)


if __name__ == "__main__":
    main()
