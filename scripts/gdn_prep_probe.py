"""GDN prefill prep/inverse probe (device machine): where the prep and inverse time goes and which
variant of them is fastest, each feeding the shipped scan kernel.

Variants: INV 0 no inverse (A blocks stored as they are; timing only), 1 nilpotent diagonal blocks in
the old fused prep kernel, 2 the same with forward substitution, 3 the old fused prep without the
inverse plus a separate inverse kernel (DIAG 0 nilpotent / 1 forward substitution; warps; BAR:
register barriers between the product chains), 4 the shipped prep (or ``_prep_grouped_kernel``: one
program per key head, q/k and the Gram products once for its value heads) followed by the shipped
inverse or ``_inverse_batched_kernel`` (the 16x16 products batched over the four block diagonals:
15 dependent [4, 16, 16] products instead of 40 single ones). Accuracy against the fp32 reference on
plain and ill-conditioned inputs for the ACCURACY set; device times per kernel by torch.profiler;
fla 0.6.0's kernel sum in the same process; then the shipped kernels under other scan launch configs.
2026-11-28 H200 results: BENCHMARKS.md ("the first runs on an H200").

python scripts/gdn_prep_probe.py OUT.json
"""

from __future__ import annotations

import json
import sys
import traceback

import torch
import triton
import triton.language as tl

from deltaserve.bench import op_gdn
from deltaserve.bench.common import device_record, kernel_device_us
from deltaserve.ops.gdn import prefill
from deltaserve.ops.gdn.prefill import _beta_block, _locate_chunk, _mm, _square_block, _unit_lower_inverse
from deltaserve.ops.gdn.triton_common import gate_scalar, logical_state_strides

_block = _square_block


@triton.jit
def _fs_inverse(scr, bi: tl.constexpr, C: tl.constexpr):
    """(I + A_bb)^-1 of diagonal block bi by forward substitution over its 16 rows (rows of A from scr)."""
    r = tl.arange(0, 16)
    t = tl.where(r[:, None] == r[None, :], 1.0, 0.0)
    base = scr + bi * 16 * C + bi * 16
    for i in tl.static_range(1, 16):
        a_row = tl.load(base + i * C + r, mask=r < i, other=0.0)  # [16] A[i, j], j < i
        new = -tl.sum(a_row[:, None] * t, 0)
        new = tl.where(r == i, 1.0, new)
        t = tl.where(r[:, None] == i, new[None, :], t)
    return t


@triton.jit
def _diag_inverse(scr, bi: tl.constexpr, C: tl.constexpr, DIAG: tl.constexpr):
    if DIAG == 0:
        t = _unit_lower_inverse(tl.load(_block(scr, bi, bi, C)))
    elif DIAG == 1:
        t = _fs_inverse(scr, bi, C)
    else:
        t = tl.load(_block(scr, bi, bi, C))
    return t


@triton.jit
def _inverse_store(
    scr, tb, b_ptr, bos, eos, sb_t, i_h, C: tl.constexpr, DIAG: tl.constexpr, BAR: tl.constexpr
):
    """Tb = (I + A)^-1 diag(beta) from the fp32 A in scr into the fp16 plane tb (DIAG 2: no inverse)."""
    t00 = _diag_inverse(scr, 0, C, DIAG)
    if BAR:
        tl.debug_barrier()
    t11 = _diag_inverse(scr, 1, C, DIAG)
    if BAR:
        tl.debug_barrier()
    t22 = _diag_inverse(scr, 2, C, DIAG)
    if BAR:
        tl.debug_barrier()
    t33 = _diag_inverse(scr, 3, C, DIAG)
    if BAR:
        tl.debug_barrier()
    a10 = tl.load(_block(scr, 1, 0, C))
    a21 = tl.load(_block(scr, 2, 1, C))
    a32 = tl.load(_block(scr, 3, 2, C))
    a20 = tl.load(_block(scr, 2, 0, C))
    a31 = tl.load(_block(scr, 3, 1, C))
    a30 = tl.load(_block(scr, 3, 0, C))
    if DIAG == 2:
        t10 = a10
        t21 = a21
        t32 = a32
        t20 = a20
        t31 = a31
        t30 = a30
    else:
        t10 = -_mm(t11, _mm(a10, t00))
        if BAR:
            tl.debug_barrier()
        t21 = -_mm(t22, _mm(a21, t11))
        if BAR:
            tl.debug_barrier()
        t32 = -_mm(t33, _mm(a32, t22))
        if BAR:
            tl.debug_barrier()
        t20 = -_mm(t22, _mm(a20, t00) + _mm(a21, t10))
        if BAR:
            tl.debug_barrier()
        t31 = -_mm(t33, _mm(a31, t11) + _mm(a32, t21))
        if BAR:
            tl.debug_barrier()
        t30 = -_mm(t33, _mm(a30, t00) + _mm(a31, t10) + _mm(a32, t20))
    tl.debug_barrier()  # every scratch read is done (the scratch may alias tb)
    offs = tl.arange(0, C)
    tl.store(tb + offs[:, None] * C + offs[None, :], tl.zeros([C, C], dtype=tl.float16))
    tl.debug_barrier()
    be0 = _beta_block(b_ptr, bos, eos, sb_t, i_h, 0)
    be1 = _beta_block(b_ptr, bos, eos, sb_t, i_h, 1)
    be2 = _beta_block(b_ptr, bos, eos, sb_t, i_h, 2)
    be3 = _beta_block(b_ptr, bos, eos, sb_t, i_h, 3)
    tl.store(_block(tb, 0, 0, C), (t00 * be0[None, :]).to(tl.float16))
    tl.store(_block(tb, 1, 0, C), (t10 * be0[None, :]).to(tl.float16))
    tl.store(_block(tb, 1, 1, C), (t11 * be1[None, :]).to(tl.float16))
    tl.store(_block(tb, 2, 0, C), (t20 * be0[None, :]).to(tl.float16))
    tl.store(_block(tb, 2, 1, C), (t21 * be1[None, :]).to(tl.float16))
    tl.store(_block(tb, 2, 2, C), (t22 * be2[None, :]).to(tl.float16))
    tl.store(_block(tb, 3, 0, C), (t30 * be0[None, :]).to(tl.float16))
    tl.store(_block(tb, 3, 1, C), (t31 * be1[None, :]).to(tl.float16))
    tl.store(_block(tb, 3, 2, C), (t32 * be2[None, :]).to(tl.float16))
    tl.store(_block(tb, 3, 3, C), (t33 * be3[None, :]).to(tl.float16))


@triton.jit
def _prep_variant(
    q_ptr, k_ptr, a_ptr, b_ptr, alog_ptr, dtb_ptr, cu_ptr, g_out_ptr, kn_out_ptr, qn_out_ptr, tq_out_ptr,
    scr_ptr, NB, scale, sq_t, sq_h, sk_t, sk_h, sa_t, sb_t,
    HV: tl.constexpr, HK: tl.constexpr, GROUP: tl.constexpr, DK: tl.constexpr, C: tl.constexpr,
    BLOCK_B: tl.constexpr, INV: tl.constexpr,
):  # fmt: skip
    """The shipped prep kernel with the inverse swapped per INV (see the module docstring)."""
    pid_c = tl.program_id(0)
    i_h = tl.program_id(1)
    cu0 = tl.load(cu_ptr)
    i_n, bos, eos = _locate_chunk(pid_c, cu_ptr, NB, BLOCK_B, C)
    if i_n >= NB:
        return
    i_kh = i_h // GROUP
    offs_c = tl.arange(0, C)
    offs_d = tl.arange(0, DK)
    rows = bos + offs_c
    m = rows < eos
    kc = tl.load(k_ptr + rows[:, None] * sk_t + i_kh * sk_h + offs_d[None, :], mask=m[:, None], other=0.0)
    rk = tl.rsqrt(tl.sum(kc.to(tl.float32) * kc.to(tl.float32), 1) + 1e-6)
    a = tl.load(a_ptr + rows * sa_t + i_h, mask=m, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + rows * sb_t + i_h, mask=m, other=0.0).to(tl.float32)
    g, beta = gate_scalar(a, b, tl.load(alog_ptr + i_h).to(tl.float32), tl.load(dtb_ptr + i_h).to(tl.float32))
    g = tl.where(m, g, 0.0)
    beta = tl.where(m, beta, 0.0)
    G = tl.cumsum(g, 0)
    tl.store(g_out_ptr + (pid_c.to(tl.int64) * HV + i_h) * C + offs_c, G)
    lower = offs_c[:, None] > offs_c[None, :]
    A = tl.dot(kc, tl.trans(kc)) * ((beta * rk)[:, None] * rk[None, :])
    A = A * tl.exp(tl.where(lower, G[:, None] - G[None, :], float("-inf")))
    tb = tq_out_ptr + (pid_c.to(tl.int64) * HV + i_h) * 2 * C * C
    tile = offs_c[:, None] * C + offs_c[None, :]
    scr = scr_ptr + (pid_c.to(tl.int64) * HV + i_h) * C * C
    tl.store(scr + tile, A)
    tl.debug_barrier()
    z = (tl.load(cu_ptr) - cu0).to(tl.int32)
    rows = rows + z
    tile = (offs_c + z)[:, None] * C + offs_c[None, :]
    if INV != 3:
        # scratch aliases the output (the shipped layout): compute everything, then zero and store
        if INV == 0:
            _inverse_store(scr, tb, b_ptr, bos, eos, sb_t, i_h, C, 2, True)
        elif INV == 1:
            _inverse_store(scr, tb, b_ptr, bos, eos, sb_t, i_h, C, 0, True)
        else:
            _inverse_store(scr, tb, b_ptr, bos, eos, sb_t, i_h, C, 1, True)
    qc = tl.load(q_ptr + rows[:, None] * sq_t + i_kh * sq_h + offs_d[None, :], mask=m[:, None], other=0.0)
    qf = qc.to(tl.float32)
    rq = tl.rsqrt(tl.sum(qf * qf, 1) + 1e-6) * scale
    kc = tl.load(k_ptr + rows[:, None] * sk_t + i_kh * sk_h + offs_d[None, :], mask=m[:, None], other=0.0)
    aqk = tl.dot(qc, tl.trans(kc)) * (rq[:, None] * rk[None, :])
    aqk = aqk * tl.exp(tl.where(offs_c[:, None] >= offs_c[None, :], G[:, None] - G[None, :], float("-inf")))
    tl.store(tb + C * C + tile, aqk.to(tl.float16))
    if i_h % GROUP == 0:
        n_off = rows[:, None] * HK * DK + i_kh * DK + offs_d[None, :]
        tl.store(kn_out_ptr + n_off, (kc.to(tl.float32) * rk[:, None]).to(tl.float16), mask=m[:, None])
        tl.store(qn_out_ptr + n_off, (qf * rq[:, None]).to(tl.float16), mask=m[:, None])


@triton.jit
def _inverse_kernel(scr_ptr, b_ptr, cu_ptr, tq_out_ptr, NB, sb_t, HV: tl.constexpr, C: tl.constexpr,
                    BLOCK_B: tl.constexpr, DIAG: tl.constexpr, BAR: tl.constexpr):  # fmt: skip
    """Tb for one (chunk, value head) from a separate fp32 A scratch."""
    pid_c = tl.program_id(0)
    i_h = tl.program_id(1)
    i_n, bos, eos = _locate_chunk(pid_c, cu_ptr, NB, BLOCK_B, C)
    if i_n >= NB:
        return
    scr = scr_ptr + (pid_c.to(tl.int64) * HV + i_h) * C * C
    tb = tq_out_ptr + (pid_c.to(tl.int64) * HV + i_h) * 2 * C * C
    _inverse_store(scr, tb, b_ptr, bos, eos, sb_t, i_h, C, DIAG, BAR)


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
    scale = tl.where(bm, 1.0 / (1.0 + tl.exp(-b_raw)), 0.0)[:, None, :]  # beta of column block b
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
    """gdn_prefill with the prep swapped for a variant; ``variant`` {"inv": 0-3, "diag": 0/1, "inv_warps": n}."""
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
    inv = variant["inv"]
    if inv == 4:  # the shipped prep (or the grouped one), then the shipped or the batched inverse
        a_buf = torch.empty(nmax, hv, 10, 16, 16, dtype=torch.float32, device=q.device)
        grouped = variant.get("grouped", False)
        prep = _prep_grouped_kernel if grouped else prefill._chunk_prep_kernel
        prep[(nmax, hk if grouped else hv)](
            q, k, a, b, x["A_log"], x["dt_bias"], cu, g_buf, kn_buf, qn_buf, tq_buf, a_buf, nb, dk**-0.5,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), a.stride(0), b.stride(0),
            HV=hv, HK=hk, GROUP=hv // hk, DK=dk, C=c, BLOCK_B=bb, num_warps=variant.get("prep_warps", 4),
        )  # fmt: skip
        if variant.get("batched", True):
            nh = variant.get("heads", 1)
            _inverse_batched_kernel[(nmax, hv // nh)](
                a_buf, b, cu, tq_buf, tq_buf.view(torch.float32), nb, b.stride(0), HV=hv, C=c, BLOCK_B=bb,
                NH=nh, num_warps=variant["inv_warps"],
            )  # fmt: skip
        else:
            prefill._chunk_inverse_kernel[(nmax, hv)](
                a_buf, b, cu, tq_buf, nb, b.stride(0), HV=hv, C=c, BLOCK_B=bb, num_warps=variant["inv_warps"]
            )
        return _scan(x, cu, pool, sl, hi, qn_buf, kn_buf, g_buf, tq_buf, o, bb)
    scr = (
        torch.empty(nmax, hv, c, c, dtype=torch.float32, device=q.device)
        if inv == 3
        else tq_buf.view(torch.float32)
    )
    _prep_variant[(nmax, hv)](
        q, k, a, b, x["A_log"], x["dt_bias"], cu, g_buf, kn_buf, qn_buf, tq_buf, scr, nb, dk**-0.5,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), a.stride(0), b.stride(0),
        HV=hv, HK=hk, GROUP=hv // hk, DK=dk, C=c, BLOCK_B=bb, INV=inv, num_warps=4,
    )  # fmt: skip
    if inv == 3:
        _inverse_kernel[(nmax, hv)](
            scr, b, cu, tq_buf, nb, b.stride(0), HV=hv, C=c, BLOCK_B=bb, DIAG=variant["diag"],
            BAR=variant.get("bar", True), num_warps=variant["inv_warps"],
        )  # fmt: skip
    return _scan(x, cu, pool, sl, hi, qn_buf, kn_buf, g_buf, tq_buf, o, bb)


def _scan(x, cu, pool, sl, hi, qn_buf, kn_buf, g_buf, tq_buf, o, bb) -> torch.Tensor:
    v = x["v"]
    hk, dk = x["q"].shape[1], x["q"].shape[2]
    hv, dv = v.shape[1], v.shape[2]
    nb, c = cu.numel() - 1, prefill.CHUNK
    ss = logical_state_strides(pool, "kv", 1)
    bv = 32
    prefill._chunk_scan_kernel[(dv // bv, hv, nb)](
        qn_buf, kn_buf, v, o, cu, g_buf, tq_buf, pool, sl, hi, v.stride(0), v.stride(1), o.stride(0),
        o.stride(1), *ss, HV=hv, HK=hk, GROUP=hv // hk, DK=dk, BV=bv, C=c, BLOCK_B=bb, num_warps=4, num_stages=3,
    )  # fmt: skip
    return o


VARIANTS = [
    {"name": "shipped"},
    {"name": "no-inverse (timing only)", "inv": 0},
    {"name": "batched inverse w2", "inv": 4, "inv_warps": 2},
    {"name": "batched inverse w4", "inv": 4, "inv_warps": 4},
    {"name": "batched inverse w8", "inv": 4, "inv_warps": 8},
    {"name": "batched inverse 2 heads w4", "inv": 4, "inv_warps": 4, "heads": 2},
    {"name": "batched inverse 2 heads w8", "inv": 4, "inv_warps": 8, "heads": 2},
    {"name": "grouped prep w4", "inv": 4, "inv_warps": 2, "batched": False, "grouped": True},
    {"name": "grouped prep w8", "inv": 4, "inv_warps": 2, "batched": False, "grouped": True, "prep_warps": 8},
    {"name": "grouped prep w4 + batched inverse w4", "inv": 4, "inv_warps": 4, "grouped": True},
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
    if "inv" not in variant:
        return prefill.gdn_prefill(
            x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], cu_seqlens=cu, state=pool,
            state_slots=sl, has_initial_state=hi, _config=variant.get("config"),
        )  # fmt: skip
    return run_variant(x, cu, pool, sl, hi, variant)


def _inputs(t: int, hk: int, hv: int, hard: bool):
    x = op_gdn.make_inputs(t, hk, hv, seed=3)
    if hard:
        gen = torch.Generator(device="cuda").manual_seed(4)
        base = torch.randn(1, hk, 128, device="cuda", generator=gen)
        x["k"] = (base + 0.2 * torch.randn(t, hk, 128, device="cuda", generator=gen)).bfloat16()
        x["b"] = torch.full_like(x["b"], 3.0)
        x["A_log"] = torch.full_like(x["A_log"], -4.0)
    cu = torch.tensor([0, t], device="cuda", dtype=torch.int32)
    pool = torch.zeros(2, hv, 128, 128, device="cuda")
    sl = torch.tensor([1], device="cuda", dtype=torch.int32)
    hi = torch.tensor([False], device="cuda")
    return x, cu, pool, sl, hi


def _accuracy(variant: dict, hard: bool, t: int = 4096, hk: int = 16, hv: int = 32) -> dict:
    from deltaserve.ops.gdn import reference as ref

    x, cu, pool, sl, hi = _inputs(t, hk, hv, hard)
    o = _call(variant, x, cu, pool, sl, hi)
    g, beta = ref.gdn_gating(x["a"], x["b"], x["A_log"], x["dt_bias"])
    o_r, s_r = ref.chunk_gated_delta_rule_ref(x["q"], x["k"], x["v"], g, beta, cu_seqlens=cu.cpu())

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    return {"o_rel": rel(o.float(), o_r), "state_rel": rel(pool[1], s_r[0])}


def _fla_device_ms(x, t: int, hv: int) -> float | None:
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

    return _profile_sum(run)


def _profile(run) -> dict[str, float]:
    run()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            run()
        torch.cuda.synchronize()
    return {k: sorted(v)[len(v) // 2] / 1e3 for k, v in kernel_device_us(prof).items()}


def _profile_sum(run) -> float:
    return sum(_profile(run).values())


def main() -> None:
    res: dict = {"device": device_record(), "accuracy": [], "rows": []}
    for var in VARIANTS:
        if var["name"] not in ACCURACY:
            continue
        for hard in (False, True):
            try:
                acc = {"variant": var["name"], "hard": hard, **_accuracy(var, hard)}
            except Exception:
                acc = {"variant": var["name"], "hard": hard, "error": traceback.format_exc()[-800:]}
            print("accuracy", acc, flush=True)
            res["accuracy"].append(acc)
    for label, hk, hv, t in [("hk16/hv32 1x32768", 16, 32, 32768), ("hk2/hv8 1x32768", 2, 8, 32768)]:
        x, cu, pool, sl, hi = _inputs(t, hk, hv, False)
        try:
            fla_ms = _fla_device_ms(x, t, hv)
        except Exception:
            fla_ms = None
            traceback.print_exc()
        print(label, "fla device ms", fla_ms, flush=True)
        res["rows"].append({"shape": label, "variant": "fla 0.6.0", "total_ms": fla_ms})
        for var in VARIANTS + [{"name": f"shipped {c}", "config": c} for c in SCAN_CONFIGS]:
            try:
                med = _profile(
                    lambda var=var, x=x, cu=cu, pool=pool, sl=sl, hi=hi: _call(var, x, cu, pool, sl, hi)
                )
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
    kstats = []
    for fn in (_prep_variant, _inverse_kernel, prefill._chunk_prep_kernel, prefill._chunk_inverse_kernel):
        for dev_cache in getattr(fn, "device_caches", {}).values():
            for key, kern in dev_cache[0].items():
                kstats.append({"kernel": fn.__name__, "n_regs": kern.n_regs, "n_spills": kern.n_spills,
                               "key": str(key)[-160:]})  # fmt: skip
    res["kernels"] = kstats
    for s in kstats:
        print(s, flush=True)
    with open(sys.argv[1], "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
