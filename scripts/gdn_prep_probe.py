"""GDN prefill prep/inverse probe (device machine): which prep and inverse kernels are fastest, each
feeding the shipped scan kernel.

A variant picks a prep kernel ("prep": the shipped ``_chunk_prep_kernel`` or ``_prep_grouped_kernel``:
one program per key head, q/k and the two Gram products once for its value heads) and an inverse
kernel ("inverse": the shipped ``_chunk_inverse_kernel`` or ``_inverse_batched_kernel``: the 16x16
products batched over the four block diagonals, 15 dependent [4 NH, 16, 16] products instead of 40
single ones, NH value heads per program). Accuracy against the fp32 reference on plain and
ill-conditioned inputs for the ACCURACY set; device times per kernel by torch.profiler; fla 0.6.0's
kernel sum in the same process; then the shipped kernels under other scan launch configs.

The variants measured on 2026-11-28 (the inverse fused into the prep, forward substitution, 1- and
4-warp split inverses, register barriers) are in BENCHMARKS.md ("the first runs on an H200") and in
this script as of commit 27986c8.

python scripts/gdn_prep_probe.py OUT.json
"""

from __future__ import annotations

import json
import sys
import traceback

import torch
import triton
import triton.language as tl
from gdn_profile import kernel_stats, reference_errors, single_sequence_case

from deltaserve.bench import op_gdn
from deltaserve.bench.common import device_record, kernel_medians_us
from deltaserve.ops.gdn import prefill
from deltaserve.ops.gdn.prefill import _locate_chunk
from deltaserve.ops.gdn.triton_common import beta_of, gate_scalar, logical_state_strides


@triton.jit
def _bmm(a, b):
    """Exact fp32 batched product of [4, 16, 16] tiles."""
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _lower_blocks(base, bi, bj, ok):
    """[B, 16, 16] blocks (bi[b], bj[b]) of the shipped compact lower-block A at base[b] (zero where
    not ok)."""
    r = tl.arange(0, 16)
    idx = tl.where(ok, bi * (bi + 1) // 2 + bj, 0)
    ptrs = base[:, None, None] + idx[:, None, None] * 256 + r[None, :, None] * 16 + r[None, None, :]
    return tl.load(ptrs, mask=ok[:, None, None], other=0.0)


@triton.jit
def _inverse_batched_kernel(a_ptr, b_ptr, cu_ptr, tq_out_ptr, scr_ptr, NB, sb_t, HV: tl.constexpr,
                            C: tl.constexpr, BLOCK_B: tl.constexpr, NH: tl.constexpr):  # fmt: skip
    """Tb like prefill._chunk_inverse_kernel for NH value heads of one chunk, with the 16x16 products
    batched over the heads' four block diagonals (batch index = 4 head + block): the diagonal
    inverses as one [4 NH, 16, 16] nilpotent chain (6 products), then the first, second and third
    sub-diagonals (2, 3 and 4 batched products). Shifted diagonal blocks go through an fp32 scratch
    aliasing each chunk's Tb plane."""
    pid_c = tl.program_id(0)
    i_n, bos, eos = _locate_chunk(pid_c, cu_ptr, NB, BLOCK_B, C)
    if i_n >= NB:
        return
    bb = tl.arange(0, 4 * NH)
    blk = bb % 4  # block index on the diagonal
    head = tl.program_id(1) * NH + bb // 4
    pair = pid_c.to(tl.int64) * HV + head  # [4 NH]
    base = a_ptr + pair * 2560
    scr = scr_ptr + pair * C * C  # fp32 view of the [2, C, C] fp16 pair: plane 0 holds 1024 floats
    r = tl.arange(0, 16)
    eye = tl.where(r[:, None] == r[None, :], 1.0, 0.0)[None, :, :]  # [1, 16, 16]
    D = _lower_blocks(base, blk, blk, blk < 4)  # [4 NH, 16, 16] strictly lower diagonal blocks
    d2 = _bmm(D, D)
    d4 = _bmm(d2, d2)
    d8 = _bmm(d4, d4)
    T = _bmm(_bmm(_bmm(eye - D, eye + d2), eye + d4), eye + d8)  # (I + A_bb)^-1
    in_blk = r[None, :, None] * 16 + r[None, None, :]
    s_ptrs = scr[:, None, None] + blk[:, None, None] * 256 + in_blk
    tl.store(s_ptrs, T)
    tl.debug_barrier()
    ok1 = blk < 3
    ok2 = blk < 2
    ok3 = blk < 1
    t1 = tl.load(s_ptrs + 256, mask=ok1[:, None, None], other=0.0)  # T of block b + 1
    t2 = tl.load(s_ptrs + 512, mask=ok2[:, None, None], other=0.0)
    t3 = tl.load(s_ptrs + 768, mask=ok3[:, None, None], other=0.0)
    l1 = -_bmm(t1, _bmm(_lower_blocks(base, blk + 1, blk, ok1), T))  # T_{b+1, b}
    l2 = -_bmm(
        t2,
        _bmm(_lower_blocks(base, blk + 2, blk, ok2), T)
        + _bmm(_lower_blocks(base, blk + 2, blk + 1, ok2), l1),
    )
    l3 = -_bmm(
        t3,
        _bmm(_lower_blocks(base, blk + 3, blk, ok3), T)
        + _bmm(_lower_blocks(base, blk + 3, blk + 1, ok3), l1)
        + _bmm(_lower_blocks(base, blk + 3, blk + 2, ok3), l2),
    )
    tl.debug_barrier()  # every scratch read is done before the planes are overwritten
    rows = bos + blk[:, None] * 16 + r[None, :]  # [4 NH, 16] rows of column block b
    bm = rows < eos
    b_raw = tl.load(b_ptr + rows * sb_t + head[:, None], mask=bm, other=0.0).to(tl.float32)
    scale = tl.where(bm, beta_of(b_raw), 0.0)[:, None, :]  # beta of column block b
    tb = tq_out_ptr + pair * 2 * C * C
    # block (i, j) of the [C, C] plane: tb + (16 i + row) C + 16 j + col
    rc = (
        tb[:, None, None]
        + (blk[:, None, None] * 16 + r[None, :, None]) * C
        + blk[:, None, None] * 16
        + r[None, None, :]
    )
    zeros = tl.zeros([4 * NH, 16, 16], dtype=tl.float16)
    for up in tl.static_range(1, 4):  # zero the blocks above the diagonal: (b, b + up)
        tl.store(rc + up * 16, zeros, mask=(blk + up < 4)[:, None, None])
    tl.store(rc, (T * scale).to(tl.float16))
    tl.store(rc + 16 * C, (l1 * scale).to(tl.float16), mask=ok1[:, None, None])
    tl.store(rc + 32 * C, (l2 * scale).to(tl.float16), mask=ok2[:, None, None])
    tl.store(rc + 48 * C, (l3 * scale).to(tl.float16), mask=ok3[:, None, None])


@triton.jit
def _prep_grouped_kernel(
    q_ptr, k_ptr, a_ptr, b_ptr, alog_ptr, dtb_ptr, cu_ptr, g_out_ptr, kn_out_ptr, qn_out_ptr, tq_out_ptr,
    a_out_ptr, NB, scale, sq_t, sq_h, sk_t, sk_h, sa_t, sb_t,
    HV: tl.constexpr, HK: tl.constexpr, GROUP: tl.constexpr, DK: tl.constexpr, C: tl.constexpr,
    BLOCK_B: tl.constexpr,
):  # fmt: skip
    """The shipped prep's outputs from one program per (chunk, key head): q/k loads, norms and the two
    Gram products once, then G, A and Aqk for each of the GROUP value heads."""
    pid_c = tl.program_id(0)
    i_kh = tl.program_id(1)
    i_n, bos, eos = _locate_chunk(pid_c, cu_ptr, NB, BLOCK_B, C)
    if i_n >= NB:
        return
    offs_c = tl.arange(0, C)
    offs_d = tl.arange(0, DK)
    rows = bos + offs_c
    m = rows < eos
    kc = tl.load(k_ptr + rows[:, None] * sk_t + i_kh * sk_h + offs_d[None, :], mask=m[:, None], other=0.0)
    rk = tl.rsqrt(tl.sum(kc.to(tl.float32) * kc.to(tl.float32), 1) + 1e-6)
    n_off = rows[:, None] * HK * DK + i_kh * DK + offs_d[None, :]
    tl.store(kn_out_ptr + n_off, (kc.to(tl.float32) * rk[:, None]).to(tl.float16), mask=m[:, None])
    qc = tl.load(q_ptr + rows[:, None] * sq_t + i_kh * sq_h + offs_d[None, :], mask=m[:, None], other=0.0)
    qf = qc.to(tl.float32)
    rq = tl.rsqrt(tl.sum(qf * qf, 1) + 1e-6) * scale
    tl.store(qn_out_ptr + n_off, (qf * rq[:, None]).to(tl.float16), mask=m[:, None])
    kk = tl.dot(kc, tl.trans(kc)) * (rk[:, None] * rk[None, :])  # [C, C] unit-key Gram
    qk = tl.dot(qc, tl.trans(kc)) * (rq[:, None] * rk[None, :])
    bi = offs_c // 16
    blk = (bi * (bi + 1) // 2)[:, None] + bi[None, :]
    a_off = blk * 256 + (offs_c % 16)[:, None] * 16 + (offs_c % 16)[None, :]
    a_mask = bi[:, None] >= bi[None, :]
    tile = offs_c[:, None] * C + offs_c[None, :]
    for j in tl.static_range(GROUP):
        i_h = i_kh * GROUP + j
        a = tl.load(a_ptr + rows * sa_t + i_h, mask=m, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + rows * sb_t + i_h, mask=m, other=0.0).to(tl.float32)
        g, beta = gate_scalar(
            a, b, tl.load(alog_ptr + i_h).to(tl.float32), tl.load(dtb_ptr + i_h).to(tl.float32)
        )
        g = tl.where(m, g, 0.0)
        beta = tl.where(m, beta, 0.0)
        G = tl.cumsum(g, 0)
        pair = pid_c.to(tl.int64) * HV + i_h
        tl.store(g_out_ptr + pair * C + offs_c, G)
        dg = G[:, None] - G[None, :]
        A = kk * beta[:, None] * tl.exp(tl.where(offs_c[:, None] > offs_c[None, :], dg, float("-inf")))
        tl.store(a_out_ptr + pair * 2560 + a_off, A, mask=a_mask)
        aqk = qk * tl.exp(tl.where(offs_c[:, None] >= offs_c[None, :], dg, float("-inf")))
        tl.store(tq_out_ptr + pair * 2 * C * C + C * C + tile, aqk.to(tl.float16))


def run_variant(x, cu, pool, sl, hi, variant: dict) -> torch.Tensor:
    """gdn_prefill with the prep and inverse kernels a variant names (see the module docstring)."""
    q, k, v, a, b = x["q"], x["k"], x["v"], x["a"], x["b"]
    t, hk, dk = q.shape
    hv, dv = v.shape[1], v.shape[2]
    nb = cu.numel() - 1
    c = prefill.CHUNK
    nmax = triton.cdiv(t, c) + nb
    bb = prefill._next_pow2(nb + 1)
    o = torch.empty(t, hv, dv, dtype=q.dtype, device=q.device)
    g_buf = torch.empty(nmax, hv, c, dtype=torch.float32, device=q.device)
    kn_buf = torch.empty(t, hk, dk, dtype=torch.float16, device=q.device)
    qn_buf = torch.empty(t, hk, dk, dtype=torch.float16, device=q.device)
    tq_buf = torch.empty(nmax, hv, 2, c, c, dtype=torch.float16, device=q.device)
    a_buf = torch.empty(nmax, hv, 10, 16, 16, dtype=torch.float32, device=q.device)
    grouped = variant["prep"] == "grouped"
    prep = _prep_grouped_kernel if grouped else prefill._chunk_prep_kernel
    prep[(nmax, hk if grouped else hv)](
        q, k, a, b, x["A_log"], x["dt_bias"], cu, g_buf, kn_buf, qn_buf, tq_buf, a_buf, nb, dk**-0.5,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), a.stride(0), b.stride(0),
        HV=hv, HK=hk, GROUP=hv // hk, DK=dk, C=c, BLOCK_B=bb, num_warps=variant.get("prep_warps", 4),
    )  # fmt: skip
    if variant["inverse"] == "batched":
        nh = variant.get("heads", 1)
        _inverse_batched_kernel[(nmax, hv // nh)](
            a_buf, b, cu, tq_buf, tq_buf.view(torch.float32), nb, b.stride(0), HV=hv, C=c, BLOCK_B=bb,
            NH=nh, num_warps=variant["inv_warps"],
        )  # fmt: skip
    else:
        prefill._chunk_inverse_kernel[(nmax, hv)](
            a_buf, b, cu, tq_buf, nb, b.stride(0), HV=hv, C=c, BLOCK_B=bb, num_warps=variant["inv_warps"]
        )
    ss = logical_state_strides(pool, "kv", 1)
    bv = 32
    prefill._chunk_scan_kernel[(dv // bv, hv, nb)](
        qn_buf, kn_buf, v, o, cu, g_buf, tq_buf, pool, sl, hi, v.stride(0), v.stride(1), o.stride(0),
        o.stride(1), *ss, HV=hv, HK=hk, GROUP=hv // hk, DK=dk, BV=bv, C=c, BLOCK_B=bb, num_warps=4, num_stages=3,
    )  # fmt: skip
    return o


VARIANTS = [
    {"name": "shipped"},
    {"name": "batched inverse w2", "prep": "shipped", "inverse": "batched", "inv_warps": 2},
    {"name": "batched inverse w4", "prep": "shipped", "inverse": "batched", "inv_warps": 4},
    {"name": "batched inverse w8", "prep": "shipped", "inverse": "batched", "inv_warps": 8},
    {
        "name": "batched inverse 2 heads w4",
        "prep": "shipped",
        "inverse": "batched",
        "inv_warps": 4,
        "heads": 2,
    },
    {
        "name": "batched inverse 2 heads w8",
        "prep": "shipped",
        "inverse": "batched",
        "inv_warps": 8,
        "heads": 2,
    },
    {"name": "grouped prep w4", "prep": "grouped", "inverse": "shipped", "inv_warps": 2},
    {"name": "grouped prep w8", "prep": "grouped", "inverse": "shipped", "inv_warps": 2, "prep_warps": 8},
    {"name": "grouped prep w4 + batched inverse w4", "prep": "grouped", "inverse": "batched", "inv_warps": 4},
]
ACCURACY = {"shipped", "batched inverse w4", "batched inverse 2 heads w8", "grouped prep w4"}
# the shipped kernels under other launch configs (gdn_prefill's _config)
SCAN_CONFIGS = [
    {"BV": 16},
    {"num_stages": 2},
    {"num_stages": 4},
    {"BV": 32, "num_warps": 8},
    {"BV": 64, "num_warps": 8},
]


def _call(variant: dict, x, cu, pool, sl, hi) -> torch.Tensor:
    if "prep" not in variant:
        return prefill.gdn_prefill(
            x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], cu_seqlens=cu, state=pool,
            state_slots=sl, has_initial_state=hi, _config=variant.get("config"),
        )  # fmt: skip
    return run_variant(x, cu, pool, sl, hi, variant)


def _fla_device_ms(x) -> float | None:
    fla_chunk, _, _ = op_gdn._fla()
    if fla_chunk is None:
        return None
    q, k, v = (x[n].contiguous().unsqueeze(0) for n in ("q", "k", "v"))
    a, b = x["a"].contiguous().unsqueeze(0), x["b"].contiguous().unsqueeze(0)

    def run():
        return fla_chunk(
            q, k, v, g=a, beta=b, A_log=x["A_log"], dt_bias=x["dt_bias"], use_gate_in_kernel=True,
            use_beta_sigmoid_in_kernel=True, use_qk_l2norm_in_kernel=True, output_final_state=True,
        )  # fmt: skip

    return sum(kernel_medians_us(run).values()) / 1e3


def main() -> None:
    res: dict = {"device": device_record(), "accuracy": [], "rows": []}
    for var in VARIANTS:
        if var["name"] not in ACCURACY:
            continue
        for hard in (False, True):
            try:
                x, cu, pool, sl, hi = single_sequence_case(4096, 16, 32, hard)
                o = _call(var, x, cu, pool, sl, hi)
                acc = {"variant": var["name"], "hard": hard, **reference_errors(x, cu, o, pool)}
            except Exception:
                acc = {"variant": var["name"], "hard": hard, "error": traceback.format_exc()[-800:]}
            print("accuracy", acc, flush=True)
            res["accuracy"].append(acc)
    for label, hk, hv, t in [("hk16/hv32 1x32768", 16, 32, 32768), ("hk2/hv8 1x32768", 2, 8, 32768)]:
        x, cu, pool, sl, hi = single_sequence_case(t, hk, hv)
        try:
            fla_ms = _fla_device_ms(x)
        except Exception:
            fla_ms = None
            traceback.print_exc()
        print(label, "fla device ms", fla_ms, flush=True)
        res["rows"].append({"shape": label, "variant": "fla 0.6.0", "total_ms": fla_ms})
        for var in VARIANTS + [{"name": f"shipped {c}", "config": c} for c in SCAN_CONFIGS]:
            try:
                us = kernel_medians_us(
                    lambda var=var, x=x, cu=cu, pool=pool, sl=sl, hi=hi: _call(var, x, cu, pool, sl, hi)
                )
                med = {k: v / 1e3 for k, v in us.items()}
                row = {
                    "shape": label,
                    "variant": var["name"],
                    "kernel_ms": med,
                    "total_ms": sum(med.values()),
                }
            except Exception:
                row = {"shape": label, "variant": var["name"], "error": traceback.format_exc()[-800:]}
            print(row, flush=True)
            res["rows"].append(row)
    res["kernels"] = kernel_stats(
        (
            _prep_grouped_kernel,
            _inverse_batched_kernel,
            prefill._chunk_prep_kernel,
            prefill._chunk_inverse_kernel,
        )
    )
    for s in res["kernels"]:
        print(s, flush=True)
    with open(sys.argv[1], "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
