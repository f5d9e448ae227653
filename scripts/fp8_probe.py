"""Probe: block-FP8 GEMM kernel variants against the shipped kernel and bf16 cuBLAS (one GPU run).

    python3 scripts/fp8_probe.py OUT.json [--quick]

Large M (W8A8, pre-quantised activations): the shipped ``_fp8_gemm_kernel`` over launch configs, and a
TMA-descriptor kernel (host ``TensorDescriptor`` for A and W tiles; per-tile scalar weight scale when each
N tile lies in one 128-row scale block; activation scales optionally K-major). Small M (1, 16): the
shipped split-K kernel and a swap-AB variant (``Wᵀ`` tile as the MMA's M side so Hopper's wgmma takes
it straight from shared memory; W loaded by TMA or plain loads). Every variant's output is checked
against the shipped kernel's (rel. error) before it is timed; bf16 ``x @ Wᵀ`` in the same process.
"""

# Every timing lambda is called inside the loop iteration that made it: late binding is harmless.
# ruff: noqa: B023

from __future__ import annotations

import json
import sys

import torch
import triton
import triton.language as tl

from deltaserve.bench.common import device_record, time_cuda, time_cuda_graph
from deltaserve.ops.fp8 import kernels as K
from deltaserve.ops.fp8.reference import quantize_block_fp8

FP8_MAX = 448.0


@triton.jit
def _large_tma_kernel(
    a_desc, as_ptr, b_desc, bs_ptr, rb_ptr, c_ptr, M, N, Kdim, sas_m, sas_k, sbs_r, sc_m,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, UNIFORM: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    n_m = tl.cdiv(M, BM)
    n_n = tl.cdiv(N, BN)
    width = GROUP_M * n_n
    first_m = (pid // width) * GROUP_M
    gm = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % gm
    pid_n = (pid % width) // gm
    off_m = pid_m * BM
    off_n = pid_n * BN
    offs_m = off_m + tl.arange(0, BM)
    offs_n = off_n + tl.arange(0, BN)
    m_ok = offs_m < M
    n_ok = offs_n < N
    if UNIFORM:
        srow0 = tl.load(rb_ptr + off_n).to(tl.int64)
    else:
        srow = tl.load(rb_ptr + offs_n, mask=n_ok, other=0).to(tl.int64)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for kb in range(0, tl.cdiv(Kdim, BK)):
        a = a_desc.load([off_m, kb * BK])  # [BM, BK]
        b = b_desc.load([off_n, kb * BK])  # [BN, BK]
        a_s = tl.load(as_ptr + offs_m * sas_m + kb * sas_k, mask=m_ok, other=0.0)  # [BM]
        part = tl.dot(a, tl.trans(b))
        if UNIFORM:
            bs = tl.load(bs_ptr + srow0 * sbs_r + kb)
            acc += part * (a_s * bs)[:, None]
        else:
            bs = tl.load(bs_ptr + srow * sbs_r + kb, mask=n_ok, other=0.0)
            acc += part * (a_s[:, None] * bs[None, :])
    mask = m_ok[:, None] & n_ok[None, :]
    tl.store(c_ptr + offs_m[:, None] * sc_m + offs_n[None, :], acc.to(c_ptr.dtype.element_ty), mask=mask)


def large_tma(xq, xs, w_q, s_inv, rb, cfg, *, uniform: bool, kmajor_scales: bool):
    bm, bn, warps, stages, group = cfg
    m, k = xq.shape
    n = w_q.shape[0]
    from triton.tools.tensor_descriptor import TensorDescriptor

    a_desc = TensorDescriptor.from_tensor(xq, [bm, 128])
    b_desc = TensorDescriptor.from_tensor(w_q, [bn, 128])
    if kmajor_scales:
        xs_t = xs.t().contiguous()  # [KB, M]
        sas_m, sas_k, xs_arg = 1, xs_t.stride(0), xs_t
    else:
        sas_m, sas_k, xs_arg = xs.stride(0), 1, xs
    out = torch.empty(m, n, dtype=torch.bfloat16, device=xq.device)
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    _large_tma_kernel[grid](
        a_desc, xs_arg, b_desc, s_inv, rb, out, m, n, k, sas_m, sas_k, s_inv.stride(0), out.stride(0),
        BM=bm, BN=bn, BK=128, GROUP_M=group, UNIFORM=uniform, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out


@triton.jit
def _step_tiles(
    w_desc, w_ptr, x_ptr, off_n, offs_n, n_ok, offs_m, m_ok, sw_n, sx_m, k0, k, TMA: tl.constexpr
):  # fmt: skip
    """One loop step's weight tile ``[BN, len(k)]`` (by TMA or plain loads) and activation tile
    ``[BMT, len(k)]`` at columns ``k`` (``k0`` = its first)."""
    if TMA:
        w = w_desc.load([off_n, k0])
    else:
        w = tl.load(w_ptr + offs_n[:, None].to(tl.int64) * sw_n + k[None, :], mask=n_ok[:, None], other=0.0)
    x = tl.load(x_ptr + offs_m[:, None] * sx_m + k[None, :], mask=m_ok[:, None], other=0.0)
    return w, x


@triton.jit
def _small_swap_kernel(
    x_ptr, w_ptr, w_desc, bs_ptr, rb_ptr, c_ptr, ws_ptr, cnt_ptr,
    M, N, Kdim, sx_m, sw_n, sbs_r, sc_m, KB_PER_SPLIT,
    SPLIT: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BMT: tl.constexpr,
    TMA: tl.constexpr, W8A8: tl.constexpr, UNIFORM: tl.constexpr, FP8_MAX_C: tl.constexpr,
    INPLACE: tl.constexpr = False, KSTEP: tl.constexpr = 1,
):  # fmt: skip
    # INPLACE (W8A16, UNIFORM): the e4m3 tile is scaled and rounded to bf16 before the MMA, which then
    # accumulates in place (the shipped kernel's W8A16 path). KSTEP: 128-wide scale blocks per loop step
    # (one [BN, KSTEP*BK] tile per load; INPLACE only).
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    off_n = pid_n * BN
    offs_n = off_n + tl.arange(0, BN)
    n_ok = offs_n < N
    offs_m = tl.arange(0, BMT)
    m_ok = offs_m < M
    kr = tl.arange(0, BK)
    if UNIFORM:
        srow0 = tl.load(rb_ptr + off_n).to(tl.int64)
    else:
        srow = tl.load(rb_ptr + offs_n, mask=n_ok, other=0).to(tl.int64)
    kb0 = pid_k * KB_PER_SPLIT
    kb1 = tl.minimum(kb0 + KB_PER_SPLIT, tl.cdiv(Kdim, BK))
    acc = tl.zeros((BN, BMT), dtype=tl.float32)
    if INPLACE:
        kw = tl.arange(0, KSTEP * BK)
        for kb in range(kb0 // KSTEP, kb1 // KSTEP):
            k0 = kb * (KSTEP * BK)
            w, x = _step_tiles(
                w_desc, w_ptr, x_ptr, off_n, offs_n, n_ok, offs_m, m_ok, sw_n, sx_m, k0, k0 + kw, TMA
            )  # [BN, KSTEP*BK], [BMT, KSTEP*BK]
            if KSTEP == 1:
                bs = tl.load(bs_ptr + srow0 * sbs_r + kb)
                wd = (w.to(tl.float32) * bs).to(x.dtype)
            else:
                bs = tl.load(bs_ptr + srow0 * sbs_r + kb * KSTEP + kw // BK)  # [KSTEP*BK]
                wd = (w.to(tl.float32) * bs[None, :]).to(x.dtype)
            acc = tl.dot(wd, tl.trans(x), acc)
    else:
        for kb in range(kb0, kb1):
            k0 = kb * BK
            w, x = _step_tiles(
                w_desc, w_ptr, x_ptr, off_n, offs_n, n_ok, offs_m, m_ok, sw_n, sx_m, k0, k0 + kr, TMA
            )  # [BN, BK], [BMT, BK]
            if UNIFORM:
                bs = tl.load(bs_ptr + srow0 * sbs_r + kb)
            else:
                bs = tl.load(bs_ptr + srow * sbs_r + kb, mask=n_ok, other=0.0)[:, None]
            if W8A8:
                xf = x.to(tl.float32)
                amax = tl.maximum(tl.max(tl.abs(xf), axis=1), 1e-10)
                xsc = amax / FP8_MAX_C
                xq = tl.minimum(tl.maximum(xf / xsc[:, None], -FP8_MAX_C), FP8_MAX_C).to(tl.float8e4nv)
                part = tl.dot(w, tl.trans(xq))  # [BN, BMT]
                acc += part * (bs * xsc[None, :])
            else:
                part = tl.dot(w.to(x.dtype), tl.trans(x))
                acc += part * bs
    mask = n_ok[:, None] & m_ok[None, :]
    out_off = offs_m[None, :] * sc_m + offs_n[:, None]  # [BN, BMT] -> c[m, n]
    if SPLIT > 1:
        w_off = offs_m[None, :] * N + offs_n[:, None]
        tl.store(ws_ptr + pid_k * (M * N) + w_off, acc, mask=mask)
        tl.debug_barrier()
        arrived = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT - 1:
            acc = tl.zeros((BN, BMT), dtype=tl.float32)
            for s in range(SPLIT):
                acc += tl.load(ws_ptr + s * (M * N) + w_off, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(c_ptr + out_off, acc.to(c_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(cnt_ptr + pid_n, 0, sem="relaxed", scope="gpu")
    else:
        tl.store(c_ptr + out_off, acc.to(c_ptr.dtype.element_ty), mask=mask)


_CNT: dict = {}


def small_swap(x, w_q, s_inv, rb, cfg, *, tma: bool, w8a8: bool, uniform: bool, kstep: int = 0):
    """``kstep`` > 0: the in-place W8A16 path with ``kstep`` scale blocks per loop step."""
    bn, warps, stages, target = cfg
    m, k = x.shape
    n = w_q.shape[0]
    n_kb = triton.cdiv(k, 128)
    tiles = triton.cdiv(n, bn)
    split = max(1, min(triton.cdiv(target, tiles), n_kb // max(kstep, 1), 32)) if target else 1
    kps = triton.cdiv(n_kb, split)
    if kstep:
        kps = triton.cdiv(kps, kstep) * kstep  # whole steps per split
    split = triton.cdiv(n_kb, kps)
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    ws = torch.empty(split, m, n, dtype=torch.float32, device=x.device) if split > 1 else out
    cnt = _CNT.get(x.device)
    if cnt is None:
        cnt = _CNT[x.device] = torch.zeros(8192, dtype=torch.int32, device=x.device)
    desc = w_q
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        desc = TensorDescriptor.from_tensor(w_q, [bn, 128 * max(kstep, 1)])
    _small_swap_kernel[(tiles, split)](
        x, w_q, desc, s_inv, rb, out, ws, cnt, m, n, k, x.stride(0), w_q.stride(0), s_inv.stride(0),
        out.stride(0), kps,
        SPLIT=split, BN=bn, BK=128, BMT=16, TMA=tma, W8A8=w8a8, UNIFORM=uniform, FP8_MAX_C=FP8_MAX,
        INPLACE=kstep > 0, KSTEP=max(kstep, 1), num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def _weights(n, k, copies):
    out = []
    for _ in range(copies):
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        q, s = quantize_block_fp8(w)
        out.append((w, q, s))
    return out, (torch.arange(n, device="cuda") // 128).to(torch.int32)


def probe_large(rows, shapes, ms):
    for n, k in shapes:
        lst, rb = _weights(n, k, 1)
        ((w, q, s),) = lst
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            xq, xs = K.per_token_group_quant_fp8(x, 128)
            ref = K.block_fp8_linear(xq, q, s, rb, x_scale=xs)
            t_bf16 = time_cuda(lambda: x @ w.T)
            flops = 2 * m * n * k

            def add(name, fn, ref=ref):
                try:
                    err = _rel(fn(), ref)
                    ms_ = time_cuda(fn)
                    r = dict(
                        kind="large",
                        shape=f"M={m} N={n} K={k}",
                        variant=name,
                        ms=ms_,
                        bf16_ms=t_bf16,
                        ratio=t_bf16 / ms_,
                        tflops=flops / ms_ / 1e9,
                        rel_err=err,
                    )
                except Exception as exc:  # noqa: BLE001
                    r = dict(kind="large", shape=f"M={m} N={n} K={k}", variant=name, error=str(exc)[:300])
                rows.append(r)
                print(json.dumps(r), flush=True)

            with K.config_restored():
                for cfg in [(128, 128, 8, 3), (64, 128, 4, 4), (128, 128, 4, 4), (128, 256, 8, 3)]:
                    K.CONFIG.update(large=cfg)
                    add(f"shipped {cfg}", lambda: K.block_fp8_linear(xq, q, s, rb, x_scale=xs))
            for cfg in [
                (128, 128, 8, 3, 8),
                (128, 128, 8, 4, 8),
                (128, 128, 4, 4, 8),
                (64, 128, 4, 4, 8),
                (128, 256, 8, 3, 8),
                (256, 128, 8, 3, 8),
            ]:
                for uni, km in ((True, True), (True, False), (False, True)):
                    add(
                        f"tma {cfg} uniform={uni} kmajor={km}",
                        lambda cfg=cfg, uni=uni, km=km: large_tma(
                            xq, xs, q, s, rb, cfg, uniform=uni, kmajor_scales=km
                        ),
                    )
            try:
                from torch.nn.functional import ScalingType, SwizzleType, scaled_mm  # noqa: F401

                rows.append(dict(kind="note", note="torch.nn.functional.scaled_mm present"))
            except Exception as exc:  # noqa: BLE001
                rows.append(dict(kind="note", note=f"no functional scaled_mm: {exc}"[:200]))


def probe_small(rows, shapes, ms):
    for n, k in shapes:
        ws, rb = _weights(n, k, 8)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            t_bf16 = time_cuda_graph([(lambda w=w: x @ w.T) for w, _, _ in ws])
            for w8a8 in (False, True):
                ref = K.block_fp8_linear(x, ws[0][1], ws[0][2], rb, quantize_activation=w8a8)

                def add(name, mk, ref=ref, w8a8=w8a8):
                    try:
                        err = _rel(mk(ws[0][1], ws[0][2])(), ref)
                        t = time_cuda_graph([mk(q, s) for _, q, s in ws])
                        r = dict(
                            kind="small",
                            shape=f"M={m} N={n} K={k}",
                            variant=name,
                            w8a8=w8a8,
                            us=t * 1e3,
                            bf16_us=t_bf16 * 1e3,
                            ratio=t_bf16 / t,
                            rel_err=err,
                            tbps=n * k / (t * 1e-3) / 1e12,
                        )
                    except Exception as exc:  # noqa: BLE001
                        r = dict(
                            kind="small",
                            shape=f"M={m} N={n} K={k}",
                            variant=name,
                            w8a8=w8a8,
                            error=str(exc)[:300],
                        )
                    rows.append(r)
                    print(json.dumps(r), flush=True)

                add("shipped", lambda q, s: lambda: K.block_fp8_linear(x, q, s, rb, quantize_activation=w8a8))
                for cfg in [
                    (64, 4, 4, 264),
                    (128, 4, 4, 264),
                    (64, 4, 6, 528),
                    (128, 4, 3, 528),
                    (128, 8, 4, 264),
                    (64, 4, 4, 132),
                ]:
                    for tma in (True, False):
                        add(
                            f"swap {cfg} tma={tma}",
                            lambda q, s, cfg=cfg, tma=tma: (
                                lambda: small_swap(x, q, s, rb, cfg, tma=tma, w8a8=w8a8, uniform=True)
                            ),
                        )
                t_sc = None
                try:
                    xq = x.to(torch.float8_e4m3fn)
                    one = torch.ones((), device="cuda")
                    t_sc = time_cuda_graph(
                        [
                            (lambda q=q: torch._scaled_mm(xq, q.T, one, one, out_dtype=torch.bfloat16))
                            for _, q, _ in ws
                        ]
                    )
                except Exception:  # noqa: BLE001
                    pass
                rows.append(
                    dict(
                        kind="small",
                        shape=f"M={m} N={n} K={k}",
                        variant="_scaled_mm per-tensor",
                        us=None if t_sc is None else t_sc * 1e3,
                        bf16_us=t_bf16 * 1e3,
                    )
                )


def probe_small2(rows, shapes, ms):
    """W8A8 swap-AB over narrow tiles, warps, stages and split targets (0 = no split-K)."""
    for n, k in shapes:
        ws, rb = _weights(n, k, 8)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            t_bf16 = time_cuda_graph([(lambda w=w: x @ w.T) for w, _, _ in ws])
            ref = K.block_fp8_linear(x, ws[0][1], ws[0][2], rb, quantize_activation=True)
            cfgs = [
                (64, 4, 4, 264),
                (64, 4, 3, 264),
                (64, 4, 5, 264),
                (64, 2, 4, 264),
                (32, 2, 4, 264),
                (32, 4, 4, 264),
                (32, 2, 6, 132),
                (32, 2, 4, 0),
                (16, 1, 4, 0),
                (16, 2, 4, 0),
                (16, 1, 6, 0),
                (16, 1, 4, 264),
                (16, 2, 4, 264),
                (32, 1, 4, 0),
                (64, 4, 4, 198),
                (64, 4, 4, 396),
            ]
            for cfg in cfgs:
                try:
                    err = _rel(
                        small_swap(x, ws[0][1], ws[0][2], rb, cfg, tma=False, w8a8=True, uniform=True), ref
                    )
                    t = time_cuda_graph(
                        [
                            (
                                lambda q=q, s=s: small_swap(
                                    x, q, s, rb, cfg, tma=False, w8a8=True, uniform=True
                                )
                            )
                            for _, q, s in ws
                        ]
                    )
                    r = dict(
                        kind="small2",
                        shape=f"M={m} N={n} K={k}",
                        variant=f"swap {cfg}",
                        us=t * 1e3,
                        bf16_us=t_bf16 * 1e3,
                        ratio=t_bf16 / t,
                        rel_err=err,
                    )
                except Exception as exc:  # noqa: BLE001
                    r = dict(
                        kind="small2", shape=f"M={m} N={n} K={k}", variant=f"swap {cfg}", error=str(exc)[:300]
                    )
                rows.append(r)
                print(json.dumps(r), flush=True)


def main() -> None:
    out = sys.argv[1]
    quick = "--quick" in sys.argv
    rows: list = [dict(kind="device", **device_record())]
    shapes = [(12288, 2048), (2048, 4096)]
    if "--small2" in sys.argv:
        try:
            probe_small2(rows, shapes, (1, 16))
        finally:
            json.dump(rows, open(out, "w"), indent=1)
        return
    try:
        probe_small(rows, shapes, (1, 16))
    finally:
        json.dump(rows, open(out, "w"), indent=1)
    try:
        probe_large(rows, shapes, (2048,) if quick else (2048, 8192))
    finally:
        json.dump(rows, open(out, "w"), indent=1)


if __name__ == "__main__":
    main()
