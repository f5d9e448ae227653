"""Triton GDN chunked prefill over varlen sequences, state through a pool.

Two launches (C = 64 tokens per chunk, d = Dk = Dv):

1. ``_chunk_prep_kernel`` — one program per (chunk, value head), fully parallel. Gating (g, beta from
   a, b, A_log, dt_bias), in-chunk cumulative log-decay G, l2norm factors of k, the strictly lower
   A = beta_i (k_i . k_j) exp(G_i - G_j) and its UT inverse T = (I + A)^-1: the four 16x16 diagonal
   blocks by batched forward substitution (Td), then T = (I - N + N^2 - N^3) Td with N = Td O (O the
   strictly block-lower part of A, N^4 = 0; tf32x3 products). Writes G [C] per chunk and value
   head, Tb = T diag(beta) [C, C] as 16-bit hi + lo planes, and per key head scale/|q| and 1/|k| [C].
2. ``_chunk_scan_kernel`` — one program per (sequence, value head, BV columns of the state). The
   state tile S [Dk, BV] stays in registers across the sequence's chunks; per chunk
       X     = V - diag(exp(G) rk) (K S)               (K raw bf16, rk = its l2norm factors)
       Vn    = Tb X                                    ("u - w S" of the WY form)
       O     = diag(scale rq exp(G)) (Q S) + (causal(Q K^T) * decay) Vn
       S     = exp(G_C) S + K^T (diag(rk exp(G_C - G)) Vn)
   Q and K enter the matrix products as the raw bf16 inputs (their l2norm factors are applied as
   row scales), and the fp32 operands S, X, Tb and the update are split into 16-bit hi + lo, so the
   state path keeps about 16 mantissa bits while using bf16 tensor cores.

Compared with fla's pipeline (cumsum, kkt+solve, w/u, h per chunk in HBM, output), nothing of size
O(T d) is written besides the output: per chunk and value head G (256 B) and Tb (16 KB) go through HBM.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltaserve.ops.gdn import checks
from deltaserve.ops.gdn.triton_common import gate_scalar, logical_state_strides

CHUNK = 64


@triton.jit
def _locate_chunk(pid_c, chunk_cu_ptr, cu_ptr, NB, BLOCK_B: tl.constexpr, C: tl.constexpr):
    """Global chunk index -> (sequence, first token, end token); sequence == NB when out of range."""
    offs = tl.arange(0, BLOCK_B)
    starts = tl.load(chunk_cu_ptr + 1 + offs, mask=offs < NB, other=2147483647)  # [BLOCK_B]
    i_n = tl.sum((starts <= pid_c).to(tl.int32), 0)
    i_n_safe = tl.minimum(i_n, NB - 1)
    c0 = tl.load(chunk_cu_ptr + i_n_safe)
    bos = tl.load(cu_ptr + i_n_safe).to(tl.int64)
    eos = tl.load(cu_ptr + i_n_safe + 1).to(tl.int64)
    return i_n, bos + (pid_c - c0).to(tl.int64) * C, eos


@triton.jit
def _store_split(p, x, C: tl.constexpr):
    """fp32 tile -> 16-bit hi at p and 16-bit lo (x - hi) at p + C*C (dtype of p)."""
    hi = x.to(p.dtype.element_ty)
    tl.store(p, hi)
    tl.store(p + C * C, (x - hi.to(tl.float32)).to(p.dtype.element_ty))


@triton.jit
def _chunk_prep_kernel(
    q_ptr,
    k_ptr,
    a_ptr,
    b_ptr,
    alog_ptr,
    dtb_ptr,
    cu_ptr,
    chunk_cu_ptr,
    g_out_ptr,
    r_out_ptr,
    t_out_ptr,
    scr_ptr,
    NB,
    scale,
    sq_t,
    sq_h,
    sk_t,
    sk_h,
    sa_t,
    sb_t,
    HV: tl.constexpr,
    HK: tl.constexpr,
    GROUP: tl.constexpr,
    DK: tl.constexpr,
    C: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """Gating, G, l2norm factors and Tb for one (chunk, value head). The UT inverse is
    T = (I - N + N^2 - N^3) Td with Td = blockdiag((I + A_ii)^-1) (16x16 forward substitution, batched
    over the 4 diagonal blocks) and N = Td O, O the strictly block-lower part of A (N^4 = 0).
    The fp32 scratch (16 KB per chunk and head) aliases t_out's own storage."""
    pid_c = tl.program_id(0)
    i_h = tl.program_id(1)
    i_n, bos, eos = _locate_chunk(pid_c, chunk_cu_ptr, cu_ptr, NB, BLOCK_B, C)
    if i_n >= NB:
        return
    i_kh = i_h // GROUP
    offs_c = tl.arange(0, C)
    rows = bos + offs_c
    m = rows < eos
    kc = tl.load(
        k_ptr + rows[:, None] * sk_t + i_kh * sk_h + tl.arange(0, DK)[None, :], mask=m[:, None], other=0.0
    )
    kf = kc.to(tl.float32)
    rk = tl.rsqrt(tl.sum(kf * kf, 1) + 1e-6)  # [C]
    a = tl.load(a_ptr + rows * sa_t + i_h, mask=m, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + rows * sb_t + i_h, mask=m, other=0.0).to(tl.float32)
    g, beta = gate_scalar(a, b, tl.load(alog_ptr + i_h).to(tl.float32), tl.load(dtb_ptr + i_h).to(tl.float32))
    g = tl.where(m, g, 0.0)
    beta = tl.where(m, beta, 0.0)
    G = tl.cumsum(g, 0)  # [C]
    tl.store(g_out_ptr + (pid_c.to(tl.int64) * HV + i_h) * C + offs_c, G)
    if i_h % GROUP == 0:
        rbase = r_out_ptr + (pid_c.to(tl.int64) * HK + i_kh) * 2 * C
        qq = tl.load(
            q_ptr + rows[:, None] * sq_t + i_kh * sq_h + tl.arange(0, DK)[None, :], mask=m[:, None], other=0.0
        ).to(tl.float32)
        tl.store(rbase + offs_c, tl.rsqrt(tl.sum(qq * qq, 1) + 1e-6) * scale)
        tl.store(rbase + C + offs_c, rk)
    # A = beta_i rk_i rk_j (k_i . k_j) exp(G_i - G_j), strictly lower
    lower = offs_c[:, None] > offs_c[None, :]
    A = tl.dot(kc, tl.trans(kc)) * ((beta * rk)[:, None] * rk[None, :])
    A = A * tl.exp(tl.where(lower, G[:, None] - G[None, :], float("-inf")))  # [C, C]
    blk_r = offs_c[:, None] // 16
    blk_c = offs_c[None, :] // 16
    O = tl.where(blk_r > blk_c, A, 0.0)
    # diagonal blocks through the scratch, as [4, 16, 16]
    scr = scr_ptr + (pid_c.to(tl.int64) * HV + i_h) * C * C
    tile = offs_c[:, None] * C + offs_c[None, :]
    tl.store(scr + tile, A)
    tl.debug_barrier()
    o4 = tl.arange(0, 4)[:, None, None]
    r16 = tl.arange(0, 16)[None, :, None]
    c16 = tl.arange(0, 16)[None, None, :]
    diag_offs = (o4 * 16 + r16) * C + o4 * 16 + c16  # [4, 16, 16]
    D = tl.load(scr + diag_offs)
    Td = tl.where(r16 == c16, 1.0, 0.0) + tl.zeros([4, 16, 16], dtype=tl.float32)
    for i in tl.static_range(1, 16):
        a_i = tl.sum(tl.where(r16 == i, D, 0.0), 1)  # [4, 16] row i of each block
        upd = tl.sum(a_i[:, :, None] * Td, 1)  # [4, 16] = a_i @ Td
        Td = tl.where(r16 == i, Td - upd[:, None, :], Td)
    tl.debug_barrier()
    tl.store(scr + tile, tl.zeros([C, C], dtype=tl.float32))
    tl.debug_barrier()
    tl.store(scr + diag_offs, Td)
    tl.debug_barrier()
    Tdf = tl.load(scr + tile)  # [C, C] block-diagonal
    N = tl.dot(Tdf, O, input_precision="tf32x3")
    N2 = tl.dot(N, N, input_precision="tf32x3")
    eye = tl.where(offs_c[:, None] == offs_c[None, :], 1.0, 0.0)
    P = eye - N + N2 - tl.dot(N2, N, input_precision="tf32x3")
    T = tl.dot(P, Tdf, input_precision="tf32x3") * beta[None, :]  # Tb = T diag(beta)
    tl.debug_barrier()  # scratch aliases t_out: every thread is done reading it
    tbase = t_out_ptr + (pid_c.to(tl.int64) * HV + i_h) * 2 * C * C
    _store_split(tbase + tile, T, C)


@triton.jit
def _dot_split(a, x_f32):
    """a @ x with a in bf16/fp16 and x fp32 split into hi + lo of a's dtype (~16 mantissa bits of x)."""
    hi = x_f32.to(a.dtype)
    lo = (x_f32 - hi.to(tl.float32)).to(a.dtype)
    return tl.dot(a, lo, acc=tl.dot(a, hi))


@triton.jit
def _chunk_scan_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    cu_ptr,
    chunk_cu_ptr,
    g_ptr,
    r_ptr,
    t_ptr,
    state_ptr,
    slot_ptr,
    init_ptr,
    sq_t,
    sq_h,
    sk_t,
    sk_h,
    sv_t,
    sv_h,
    so_t,
    so_h,
    ss_s,
    ss_h,
    ss_k,
    ss_v,
    HV: tl.constexpr,
    HK: tl.constexpr,
    GROUP: tl.constexpr,
    DK: tl.constexpr,
    BV: tl.constexpr,
    C: tl.constexpr,
):
    pid_v = tl.program_id(0)
    i_h = tl.program_id(1)
    i_n = tl.program_id(2)
    i_kh = i_h // GROUP
    bos = tl.load(cu_ptr + i_n).to(tl.int64)
    eos = tl.load(cu_ptr + i_n + 1).to(tl.int64)
    c0 = tl.load(chunk_cu_ptr + i_n).to(tl.int64)
    n_chunks = tl.cdiv(eos - bos, C)
    offs_k = tl.arange(0, DK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    offs_c = tl.arange(0, C)
    slot = tl.load(slot_ptr + i_n).to(tl.int64)
    s_base = state_ptr + slot * ss_s + i_h * ss_h
    if tl.load(init_ptr + i_n) != 0:
        S = tl.load(s_base + offs_k[:, None] * ss_k + offs_v[None, :] * ss_v).to(tl.float32)  # [DK, BV]
    else:
        S = tl.zeros([DK, BV], dtype=tl.float32)
    row = bos
    for j in range(n_chunks):
        r = row + offs_c  # [C]
        m = r < eos
        qc = tl.load(q_ptr + r[:, None] * sq_t + i_kh * sq_h + offs_k[None, :], mask=m[:, None], other=0.0)
        kc = tl.load(k_ptr + r[:, None] * sk_t + i_kh * sk_h + offs_k[None, :], mask=m[:, None], other=0.0)
        vc = tl.load(v_ptr + r[:, None] * sv_t + i_h * sv_h + offs_v[None, :], mask=m[:, None], other=0.0)
        cidx = c0 + j
        cbase = cidx * HV + i_h
        G = tl.load(g_ptr + cbase * C + offs_c)  # [C] cumulative log-decay
        g_last = tl.load(g_ptr + cbase * C + C - 1)
        rbase = r_ptr + (cidx * HK + i_kh) * 2 * C
        rq = tl.load(rbase + offs_c)  # [C] scale / |q|
        rk = tl.load(rbase + C + offs_c)  # [C] 1 / |k|
        # row offsets from the loop-carried `row`, so the [C, C] offset tensor is not hoisted (and kept live)
        t_rows = (r - row) * C
        t_ptrs = t_ptr + cbase * 2 * C * C + t_rows[:, None] + offs_c[None, :]
        t_hi = tl.load(t_ptrs)  # [C, C] 16-bit
        t_lo = tl.load(t_ptrs + C * C)
        eg = tl.exp(G)
        # state reads: split hi/lo products with the raw 16-bit q/k
        s_hi = S.to(qc.dtype)
        s_lo = (S - s_hi.to(tl.float32)).to(qc.dtype)
        ks = tl.dot(kc, s_lo, acc=tl.dot(kc, s_hi))  # [C, BV]
        qs = tl.dot(qc, s_lo, acc=tl.dot(qc, s_hi))  # [C, BV]
        x = vc.to(tl.float32) - (eg * rk)[:, None] * ks
        x_hi = x.to(t_hi.dtype)
        x_lo = (x - x_hi.to(tl.float32)).to(t_hi.dtype)
        vn = tl.dot(t_lo, x_hi, acc=tl.dot(t_hi, x_lo, acc=tl.dot(t_hi, x_hi)))  # [C, BV]
        qk = tl.dot(qc, tl.trans(kc))  # [C, C]
        decay = tl.exp(tl.where(r[:, None] >= r[None, :], G[:, None] - G[None, :], float("-inf")))
        aqk = qk * (rq[:, None] * rk[None, :]) * decay
        o = (rq * eg)[:, None] * qs + tl.dot(aqk, vn)
        tl.store(
            o_ptr + r[:, None] * so_t + i_h * so_h + offs_v[None, :],
            o.to(o_ptr.dtype.element_ty),
            mask=m[:, None],
        )
        y = (rk * tl.exp(g_last - G))[:, None] * vn  # [C, BV]
        S = S * tl.exp(g_last) + _dot_split(tl.trans(kc), y)
        row += C
    # (row - bos - n_chunks * C) == 0, but loop-carried: keeps the [DK, BV] store pointers from being
    # computed before the loop and held in registers through it
    zero = row - bos - n_chunks * C
    tl.store(
        s_base + zero + offs_k[:, None] * ss_k + offs_v[None, :] * ss_v, S.to(state_ptr.dtype.element_ty)
    )


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def gdn_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor,
    state: torch.Tensor,
    state_slots: torch.Tensor,
    has_initial_state: torch.Tensor,
    state_layout: str = "kv",
    scale: float | None = None,
    _config: dict | None = None,
) -> torch.Tensor:
    """Varlen chunked GDN prefill (Triton); see deltaserve.ops.gdn.gdn_prefill for the contract.

    q, k [T, Hk, Dk]; v [T, Hv, Dv]; a, b [T, Hv]; cu_seqlens [B+1]; state pool by slot.
    Returns o [T, Hv, Dv] in q.dtype. No host sync (the grid uses the bound cdiv(T, 64) + B chunks).
    """
    nb, hk, hv, dk, dv = checks.check_prefill(
        q, k, v, a, b, A_log, dt_bias, cu_seqlens, state, state_slots, has_initial_state, state_layout
    )
    for name, x in (("q", q), ("k", k), ("v", v), ("a", a), ("b", b), ("A_log", A_log), ("dt_bias", dt_bias)):
        checks.check_inner_contiguous(name, x)
    if q.dtype not in (torch.bfloat16, torch.float16) or k.dtype != q.dtype:
        raise ValueError(f"q: the Triton prefill takes bf16/fp16 q and k, got {q.dtype}/{k.dtype}")
    if dk not in (64, 128) or dv & (dv - 1) or dv < 16:
        raise ValueError(f"v: unsupported head dims Dk={dk}, Dv={dv} for the Triton prefill")
    cfg = {"BV": 16, "num_warps": 4, "num_stages": 2, "prep_warps": 4}
    if _config:
        cfg.update(_config)
    bv = min(cfg["BV"], dv)
    t = q.shape[0]
    if scale is None:
        scale = dk**-0.5
    o = torch.empty(t, hv, dv, dtype=q.dtype, device=q.device)
    c = CHUNK
    lens = cu_seqlens[1:] - cu_seqlens[:-1]  # [B]
    chunk_cu = torch.zeros(nb + 1, dtype=torch.int32, device=q.device)
    torch.cumsum((lens + c - 1) // c, 0, out=chunk_cu[1:])
    n_chunk_max = triton.cdiv(t, c) + nb
    g_buf = torch.empty(n_chunk_max, hv, c, dtype=torch.float32, device=q.device)
    r_buf = torch.empty(n_chunk_max, hk, 2, c, dtype=torch.float32, device=q.device)
    t_buf = torch.empty(n_chunk_max, hv, 2, c, c, dtype=q.dtype, device=q.device)
    _chunk_prep_kernel[(n_chunk_max, hv)](
        q, k, a, b, A_log, dt_bias, cu_seqlens, chunk_cu, g_buf, r_buf, t_buf, t_buf.view(torch.float32),
        nb, scale,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), a.stride(0), b.stride(0),
        HV=hv, HK=hk, GROUP=hv // hk, DK=dk, C=c, BLOCK_B=_next_pow2(nb + 1),
        num_warps=cfg.get("prep_warps", 4),
    )  # fmt: skip
    ss = logical_state_strides(state, state_layout, 1)
    _chunk_scan_kernel[(dv // bv, hv, nb)](
        q, k, v, o, cu_seqlens, chunk_cu, g_buf, r_buf, t_buf, state, state_slots, has_initial_state,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        o.stride(0), o.stride(1), *ss,
        HV=hv, HK=hk, GROUP=hv // hk, DK=dk, BV=bv, C=c,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return o
