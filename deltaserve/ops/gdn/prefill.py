"""Triton GDN chunked prefill over varlen sequences, state through a pool.

Three kernels (C = 64 tokens per chunk, d = Dk = Dv):

1. ``_chunk_prep_kernel`` — one program per (chunk, key head), fully parallel. l2 normalisation and
   the two Gram products q k^T, k k^T once (full [C, C] tensor-core products), the fp16 normalised q
   (times scale) and k for the scan ([T, Hk, Dk], or for the TMA scan chunk-major [chunks, Hk, C, Dk]
   with zero rows past each sequence's end), then for each of the key head's value heads:
   gating (g, beta from a, b, A_log, dt_bias), the in-chunk cumulative log-decay G and
       A   = strictly lower beta_i (k_i . k_j) exp(G_i - G_j)   (unit k; fp16, 10 lower 16x16 blocks)
       Aqk = causal (q_i . k_j) exp(G_i - G_j)                  (unit q, k; scale; fp16 for the scan)
   (H200, 16/32 x 32k: 0.37 ms against 0.48 ms with one program per value head.) Capped at 168
   registers, so that three programs share an SM.
2. ``_chunk_inverse_kernel`` — one one-warp program per (chunk, value head):
       Tb = (I + A)^-1 diag(beta)   (fp16 for the scan)
   by 16x16 blocks: diagonal blocks by merging 2 -> 4 -> 8 -> 16 blocks (``_unit_lower_inverse``),
   the six others by block forward substitution T_ij = -T_ii sum_k A_ik T_kj. The products run on
   tensor cores with fp16 operands (10-bit significand, as tf32's and the fp16 Tb they feed; A's
   entries and the inverse's stay far inside fp16's range). H200, 16/32 x 8 x 2048: 58 us against
   154 us with tf32 products, two warps and A in fp32, with the same output error on random and on
   ill-conditioned inputs (2.4e-3; scripts/gdn_parts_probe.py). Exact fp32 FMA products where there are
   no tensor cores. Its own launch because these small products want one warp while the Gram products
   want a warpgroup.
3. ``_chunk_scan_kernel`` — one program per (sequence, value head, BV columns of the state). The
   state tile S [Dk, BV] stays in fp32 registers across the sequence's chunks; per chunk
       X  = V - diag(exp(G)) (Kn S)
       Vn = Tb X                               ("u - w S" of the WY form)
       O  = diag(exp(G)) (Qn S) + Aqk Vn
       S  = exp(G_C) S + Kn^T diag(exp(G_C - G)) Vn
   Five tensor-core products per chunk with fp16 operands (11-bit mantissa, fp32 accumulation),
   about 8x finer than bf16 operands: the carried state stays within ~2e-4 of fp32 over long
   sequences. Trap: fp16 tops out at 65504; unit q/k, Tb and Aqk are far below it, and the state,
   X and Vn scale with |v|, so values must stay below ~1e4.
   For long sequences on Hopper with column tiles of at most 32 (``_use_tma``) the chunk's q, k, Tb
   and Aqk tiles come by TMA (host-side tensor descriptors of the buffers' 2-D views): one copy per
   tile and no per-thread addresses or masks, which took a third of a chunk's instructions (ncu: a
   lone sequence's scan is bound by its instruction stream). v stays a masked load: a NaN in one
   sequence's v must not reach another's state through an exact-zero Tb row.
   When the batch gives more programs than SMs, two share an SM (2 pipeline stages), and the tile
   is held transposed, S^T [64, Dk] (``_scan_chunks_st``): the same products transposed, so every
   left operand (S^T, X^T, Vn^T) comes from registers and only Qn, Kn, Tb, Aqk are read from shared
   memory. H200, 16/32 x 8 x 2048: 0.56 ms against 0.76 (fla 0.6.0: 1.05); ``_scan_tiles``.

The scan is latency-bound when few sequences leave it about one program per SM, so for long prefills
of few sequences (``_pipelined``) the chunks are cut into segments (16 chunks, then 128 at a time):
prep and inverse of segment i run on the caller's stream while a high-priority side stream scans
segment i - 1, the state going from segment to segment through an fp32 carry [B, Hv, Dk, Dv]
(bit-identical to one pass). H200, 16/32 x 32k device time: 1.27 ms against 1.45 ms in one pass
(fla 0.6.0: 2.08 ms). Each segment costs three launches of host time, hence the length threshold.

With few value heads (Hv 8: Qwen3.5-397B at TP8) even that leaves most of the card idle, so long
sequences are cut into parts scanned side by side (``_part_chunks``). The state after t tokens is
affine in the state before them, S' = M S + S0, with M the product of the tokens' exp(g)(I - beta k k^T):
- ``_chunk_scan_kernel`` PHASE 1: part 0 from the pool with outputs; every middle part from zero (S0),
  and in extra column tiles from the identity with v = 0 (its transition M);
- ``_chunk_combine_kernel``: the state before each part, in part order (tf32x3 products);
- PHASE 2: parts 1.. again from those states, with outputs; the last writes the pool.
About twice the scan's products for up to 16x the programs: H200, Hv 8 x 32k tokens 0.55 ms against
0.82 in one pass (fla 0.6.0: 0.94).

Compared with fla's pipeline (cumsum, kkt+solve, w/u, h per chunk in HBM, output), the O(T d)
intermediates are only the fp16 normalised q and k (per key head); per chunk and value head G (256 B),
A (5 KB fp16) and Tb, Aqk (8 KB each) go through HBM.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from deltaserve.ops.device import capability, device_index, num_sms
from deltaserve.ops.gdn import checks
from deltaserve.ops.gdn.triton_common import beta_of, gate_scalar, logical_state_strides

CHUNK = 64


@triton.jit
def _chunk_counts(cu_ptr, NB, BLOCK_B: tl.constexpr, C: tl.constexpr):
    """Per sequence (``[BLOCK_B]``, 0 past NB): chunk count and exclusive end in the global chunk order."""
    offs = tl.arange(0, BLOCK_B)
    ok = offs < NB
    lo = tl.load(cu_ptr + offs, mask=ok, other=0)
    hi = tl.load(cu_ptr + offs + 1, mask=ok, other=0)
    nch = tl.where(ok, (hi - lo + C - 1) // C, 0)
    return offs, ok, nch, tl.cumsum(nch, 0)


@triton.jit
def _first_chunk(i_n, offs, nch, ends):
    """First global chunk of sequence ``i_n``, from ``_chunk_counts``' outputs (0 past the last)."""
    return tl.sum(tl.where(offs == i_n, ends - nch, 0), 0)


@triton.jit
def _locate_chunk(pid_c, cu_ptr, NB, BLOCK_B: tl.constexpr, C: tl.constexpr):
    """Global chunk index -> (sequence, first token, end token); sequence == NB when out of range.
    The chunk layout is derived from cu_seqlens in-kernel (no host-side cumsum launches)."""
    offs, ok, nch, ends = _chunk_counts(cu_ptr, NB, BLOCK_B, C)
    i_n = tl.sum((tl.where(ok, ends, 2147483647) <= pid_c).to(tl.int32), 0)
    c0 = _first_chunk(i_n, offs, nch, ends)
    i_n_safe = tl.minimum(i_n, NB - 1)
    bos = tl.load(cu_ptr + i_n_safe).to(tl.int64)
    eos = tl.load(cu_ptr + i_n_safe + 1).to(tl.int64)
    return i_n, bos + (pid_c - c0).to(tl.int64) * C, eos


@triton.jit
def _unit_lower_inverse(D, PRECISION: tl.constexpr):
    """(I + D)^-1 for strictly lower D [16, 16], by merging diagonal blocks of size 2 -> 4 -> 8 -> 16:
    the 2x2 blocks' inverses are I - D, and a block pair [[T0, 0], [D10, T1]] merges into
    [[T0, 0], [-T1 D10 T0, T1]], i.e. T <- T - T (D_off T) with D_off the next level's off-diagonal
    blocks. Six dependent products, each a stable forward-substitution step (the nilpotent product
    (I - D)(I + D^2)(I + D^4)(I + D^8) has as many but cancels terms of size |D|^8)."""
    r = tl.arange(0, 16)
    row = r[:, None]
    col = r[None, :]
    t = tl.where(row == col, 1.0, 0.0) - tl.where(row // 2 == col // 2, D, 0.0)
    for lvl in tl.static_range(1, 4):  # merge blocks of 2^lvl into blocks of 2^(lvl + 1)
        off = (row // (2 << lvl) == col // (2 << lvl)) & (row // (1 << lvl) != col // (1 << lvl))
        t = t - _mm(t, _mm(tl.where(off, D, 0.0), t, PRECISION), PRECISION)
    return t


@triton.jit
def _mm(a, b, PRECISION: tl.constexpr):
    """Product of 16x16 fp32 tiles: "tf32" on tensor cores, "ieee" as exact fp32 FMA ("tf32x3" measured
    slower than both, BENCHMARKS.md), "fp16" on tensor cores with fp16 operands (tf32's 10-bit
    significand; fp32 accumulation)."""
    if PRECISION == "fp16":
        out = tl.dot(a.to(tl.float16), b.to(tl.float16))
    else:
        out = tl.dot(a, b, input_precision=PRECISION)
    return out


@triton.jit
def _lower_offset(row, col):
    """Offset of element (row, col), row // 16 >= col // 16, of a [64, 64] lower-triangular matrix
    stored as its ten 16x16 lower blocks, row-major by block (block (bi, bj) at bi (bi + 1) / 2 + bj)."""
    bi = row // 16
    return (bi * (bi + 1) // 2 + col // 16) * 256 + (row % 16) * 16 + col % 16


@triton.jit
def _lower_block(base, bi: tl.constexpr, bj: tl.constexpr):
    """Pointers to block (bi, bj), bj <= bi, of a ``_lower_offset`` matrix at base."""
    r = tl.arange(0, 16)
    return base + _lower_offset(bi * 16 + r[:, None], bj * 16 + r[None, :])


@triton.jit(do_not_specialize=["c_off"])
def _chunk_prep_kernel(
    q_ptr,
    k_ptr,
    a_ptr,
    b_ptr,
    alog_ptr,
    dtb_ptr,
    cu_ptr,
    g_out_ptr,
    kn_out_ptr,
    qn_out_ptr,
    tq_out_ptr,
    a_out_ptr,
    NB,
    c_off,
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
    CHUNK_MAJOR: tl.constexpr,
):
    """For one (chunk c_off + program 0, key head): the fp16 normalised q (times scale) and k (as
    [T, HK, DK], or with ``CHUNK_MAJOR`` as [chunks, HK, C, DK] with zero rows past the sequence's end:
    the TMA scan's whole-chunk tiles), the two
    Gram products once, then G, A (lower blocks, in a_out_ptr's dtype) and Aqk (fp16, plane 1 of the
    chunk's [2, C, C] pair) for each of the key head's GROUP value heads. Gram matrices as full [C, C]
    products (one warpgroup MMA each on Hopper)."""
    pid_c = c_off + tl.program_id(0)
    i_kh = tl.program_id(1)
    i_n, bos, eos = _locate_chunk(pid_c, cu_ptr, NB, BLOCK_B, C)
    if i_n >= NB:
        return
    offs_c = tl.arange(0, C)
    offs_d = tl.arange(0, DK)
    rows = bos + offs_c
    m = rows < eos
    kc = tl.load(k_ptr + rows[:, None] * sk_t + i_kh * sk_h + offs_d[None, :], mask=m[:, None], other=0.0)
    rk = tl.rsqrt(tl.sum(kc.to(tl.float32) * kc.to(tl.float32), 1) + 1e-6)  # [C]
    if CHUNK_MAJOR:
        n_off = (pid_c.to(tl.int64) * HK + i_kh) * C * DK + offs_c[:, None] * DK + offs_d[None, :]
    else:
        n_off = rows[:, None] * HK * DK + i_kh * DK + offs_d[None, :]
    _store_normed(kn_out_ptr + n_off, kc.to(tl.float32) * rk[:, None], m, CHUNK_MAJOR)
    qc = tl.load(q_ptr + rows[:, None] * sq_t + i_kh * sq_h + offs_d[None, :], mask=m[:, None], other=0.0)
    qf = qc.to(tl.float32)
    rq = tl.rsqrt(tl.sum(qf * qf, 1) + 1e-6) * scale  # [C]
    _store_normed(qn_out_ptr + n_off, qf * rq[:, None], m, CHUNK_MAJOR)
    kk = tl.dot(kc, tl.trans(kc)) * (rk[:, None] * rk[None, :])  # [C, C] unit-key Gram
    qk = tl.dot(qc, tl.trans(kc)) * (rq[:, None] * rk[None, :])  # [C, C]
    a_off = _lower_offset(offs_c[:, None], offs_c[None, :])
    a_mask = offs_c[:, None] // 16 >= offs_c[None, :] // 16  # the ten lower blocks, diagonal ones whole
    tile = offs_c[:, None] * C + offs_c[None, :]
    for j in tl.static_range(GROUP):
        i_h = i_kh * GROUP + j
        a = tl.load(a_ptr + rows * sa_t + i_h, mask=m, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + rows * sb_t + i_h, mask=m, other=0.0).to(tl.float32)
        g, beta = gate_scalar(
            a, b, tl.load(alog_ptr + i_h).to(tl.float32), tl.load(dtb_ptr + i_h).to(tl.float32)
        )
        G = tl.cumsum(tl.where(m, g, 0.0), 0)  # [C]
        pair = pid_c.to(tl.int64) * HV + i_h
        tl.store(g_out_ptr + pair * C + offs_c, G)
        # exp(G_i - G_j) on and below the diagonal (one exp per pair for both products)
        decay = tl.exp(tl.where(offs_c[:, None] >= offs_c[None, :], G[:, None] - G[None, :], float("-inf")))
        # A = beta_i (k_i . k_j) exp(G_i - G_j), unit k, strictly lower (zero above the diagonal)
        A = kk * tl.where(m, beta, 0.0)[:, None] * tl.where(offs_c[:, None] > offs_c[None, :], decay, 0.0)
        tl.store(a_out_ptr + pair * 2560 + a_off, A.to(a_out_ptr.dtype.element_ty), mask=a_mask)
        # Aqk = causal (q_i . k_j) exp(G_i - G_j) scale, unit q and k -> plane 1
        aqk = qk * decay
        tl.store(tq_out_ptr + pair * 2 * C * C + C * C + tile, aqk.to(tl.float16))


@triton.jit(do_not_specialize=["c_off"])
def _chunk_inverse_kernel(a_ptr, b_ptr, cu_ptr, tq_out_ptr, NB, c_off, sb_t, HV: tl.constexpr, C: tl.constexpr,
                          BLOCK_B: tl.constexpr, PD: tl.constexpr, P: tl.constexpr):  # fmt: skip
    """Tb = (I + A)^-1 diag(beta) for one (chunk c_off + program 0, value head) into plane 0 of its
    [2, C, C] pair (fp16, zero above the diagonal blocks), from the prep kernel's lower blocks of A
    (fp16 or fp32); PD and P are the input precisions of the 16x16 products inside and between the
    diagonal blocks (``_mm``: "ieee", "tf32" or "fp16")."""
    pid_c = c_off + tl.program_id(0)
    i_h = tl.program_id(1)
    i_n, bos, eos = _locate_chunk(pid_c, cu_ptr, NB, BLOCK_B, C)
    if i_n >= NB:
        return
    base = a_ptr + (pid_c.to(tl.int64) * HV + i_h) * 2560
    t00 = _unit_lower_inverse(tl.load(_lower_block(base, 0, 0)).to(tl.float32), PD)
    t11 = _unit_lower_inverse(tl.load(_lower_block(base, 1, 1)).to(tl.float32), PD)
    t22 = _unit_lower_inverse(tl.load(_lower_block(base, 2, 2)).to(tl.float32), PD)
    t33 = _unit_lower_inverse(tl.load(_lower_block(base, 3, 3)).to(tl.float32), PD)
    a10 = tl.load(_lower_block(base, 1, 0)).to(tl.float32)
    a21 = tl.load(_lower_block(base, 2, 1)).to(tl.float32)
    a32 = tl.load(_lower_block(base, 3, 2)).to(tl.float32)
    t10 = -_mm(t11, _mm(a10, t00, P), P)
    t21 = -_mm(t22, _mm(a21, t11, P), P)
    t32 = -_mm(t33, _mm(a32, t22, P), P)
    a20 = tl.load(_lower_block(base, 2, 0)).to(tl.float32)
    t20 = -_mm(t22, _mm(a20, t00, P) + _mm(a21, t10, P), P)
    a31 = tl.load(_lower_block(base, 3, 1)).to(tl.float32)
    t31 = -_mm(t33, _mm(a31, t11, P) + _mm(a32, t21, P), P)
    a30 = tl.load(_lower_block(base, 3, 0)).to(tl.float32)
    t30 = -_mm(t33, _mm(a30, t00, P) + _mm(a31, t10, P) + _mm(a32, t20, P), P)
    tb = tq_out_ptr + (pid_c.to(tl.int64) * HV + i_h) * 2 * C * C
    for bi in tl.static_range(4):  # zero above the diagonal blocks
        for bj in tl.static_range(bi + 1, 4):
            tl.store(_square_block(tb, bi, bj, C), tl.zeros([16, 16], dtype=tl.float16))
    be0 = _beta_block(b_ptr, bos, eos, sb_t, i_h, 0)
    be1 = _beta_block(b_ptr, bos, eos, sb_t, i_h, 1)
    be2 = _beta_block(b_ptr, bos, eos, sb_t, i_h, 2)
    be3 = _beta_block(b_ptr, bos, eos, sb_t, i_h, 3)
    tl.store(_square_block(tb, 0, 0, C), (t00 * be0[None, :]).to(tl.float16))
    tl.store(_square_block(tb, 1, 0, C), (t10 * be0[None, :]).to(tl.float16))
    tl.store(_square_block(tb, 1, 1, C), (t11 * be1[None, :]).to(tl.float16))
    tl.store(_square_block(tb, 2, 0, C), (t20 * be0[None, :]).to(tl.float16))
    tl.store(_square_block(tb, 2, 1, C), (t21 * be1[None, :]).to(tl.float16))
    tl.store(_square_block(tb, 2, 2, C), (t22 * be2[None, :]).to(tl.float16))
    tl.store(_square_block(tb, 3, 0, C), (t30 * be0[None, :]).to(tl.float16))
    tl.store(_square_block(tb, 3, 1, C), (t31 * be1[None, :]).to(tl.float16))
    tl.store(_square_block(tb, 3, 2, C), (t32 * be2[None, :]).to(tl.float16))
    tl.store(_square_block(tb, 3, 3, C), (t33 * be3[None, :]).to(tl.float16))


@triton.jit
def _square_block(base, bi: tl.constexpr, bj: tl.constexpr, C: tl.constexpr):
    """Pointers to 16x16 block (bi, bj) of a row-major [C, C] matrix."""
    r = tl.arange(0, 16)
    return base + (bi * 16 + r)[:, None] * C + bj * 16 + r[None, :]


@triton.jit
def _store_normed(ptrs, x, m, CHUNK_MAJOR: tl.constexpr):
    """Store the normalised rows ``x [C, DK]`` (fp32) as fp16: the rows past the sequence's end (``~m``)
    as zeros with ``CHUNK_MAJOR`` (whole-chunk tiles), else not at all (they are the next sequence's)."""
    if CHUNK_MAJOR:
        tl.store(ptrs, tl.where(m[:, None], x, 0.0).to(tl.float16))
    else:
        tl.store(ptrs, x.to(tl.float16), mask=m[:, None])


@triton.jit
def _beta_block(b_ptr, bos, eos, sb_t, i_h, bi: tl.constexpr):
    """beta = sigmoid(b) of rows [bos + 16 bi, bos + 16 bi + 16), 0 past eos."""
    rows = bos + bi * 16 + tl.arange(0, 16)
    m = rows < eos
    b = tl.load(b_ptr + rows * sb_t + i_h, mask=m, other=0.0).to(tl.float32)
    return tl.where(m, beta_of(b), 0.0)


@triton.jit(do_not_specialize=["c_lo", "c_hi", "L", "NP"])
def _chunk_scan_kernel(
    qn_src,
    kn_src,
    v_ptr,
    o_ptr,
    cu_ptr,
    g_ptr,
    tq_src,
    state_ptr,
    slot_ptr,
    init_ptr,
    carry_ptr,
    start_ptr,
    trans_ptr,
    c_lo,
    c_hi,
    L,
    NP,
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
    DV: tl.constexpr,
    BV: tl.constexpr,
    C: tl.constexpr,
    BLOCK_B: tl.constexpr,
    PHASE: tl.constexpr,
    ST: tl.constexpr,
    TMA: tl.constexpr,
):
    """PHASE 0: the scan over the chunks of one sequence that lie in global chunks [c_lo, c_hi). A
    sequence's state starts from the pool (or zero) at its first chunk and otherwise from the fp32 carry
    [NB, HV, DK, DV] the previous segment left; it goes to the pool after its last chunk and otherwise
    to the carry.

    PHASE 1 and 2 split each sequence into parts of L chunks scanned side by side (program_id(2) =
    sequence * NP + part; ``_part_chunks`` on the host). Phase 1 scans part 0 from the pool (or zero) with
    outputs, and each middle part p from zero without outputs, into start[p + 1]; the column tiles past
    DV // BV carry the part's transition matrix instead (identity start, v = 0) into trans[p]. After
    ``_chunk_combine_kernel`` start[p] holds the true state before part p, and phase 2 scans parts
    1.. again from it with outputs; the last part (phase 1's part 0 when it is the only one) writes the
    pool. start / trans: [NB * NP, HV, DK, DV | DK] fp32.

    ``ST``: the state tile is held transposed, [BV, DK] (``_scan_chunks_st``; the plan's BV 64 is
    wgmma's M; smaller tiles run on mma.sync).

    ``TMA``: qn_src, kn_src and tq_src are TMA descriptors of the chunk-major q, k ([chunks * HK * C, DK])
    and the Tb / Aqk pairs ([chunks * HV * 2 * C, C]); else pointers, q and k token-major [T, HK, DK]."""
    pid_v = tl.program_id(0)
    i_h = tl.program_id(1)
    if PHASE == 0:
        i_n = tl.program_id(2)
        nb = tl.num_programs(2)
    else:
        i_n = tl.program_id(2) // NP
        part = tl.program_id(2) % NP
        nb = tl.num_programs(2) // NP
    i_kh = i_h // GROUP
    bos = tl.load(cu_ptr + i_n).to(tl.int64)
    eos = tl.load(cu_ptr + i_n + 1).to(tl.int64)
    offs_b, _, nch, ends = _chunk_counts(cu_ptr, nb, BLOCK_B, C)
    c0 = _first_chunk(i_n, offs_b, nch, ends).to(tl.int64)
    n_chunks = tl.cdiv(eos - bos, C)
    trans = pid_v >= DV // BV  # phase 1 only: a tile of the part's transition matrix
    if PHASE == 0:
        j_lo = tl.maximum(c_lo - c0, 0)
        j_hi = tl.minimum(c_hi - c0, n_chunks)
        # an empty sequence (no chunks) is handled once, by the segment holding its chunk position c0
        if (j_lo >= j_hi) & ((n_chunks > 0) | (c0 < c_lo) | (c0 >= c_hi)):
            return
    else:
        n_parts = tl.maximum(tl.cdiv(n_chunks, L), 1)  # an empty sequence is one empty part
        last = part == n_parts - 1
        if PHASE == 1:
            # the last part only runs in phase 2; part 0 needs no transition matrix
            if (part >= n_parts) | ((part > 0) & last) | ((part == 0) & trans):
                return
        elif (part >= n_parts) | (part == 0):
            return
        j_lo = (part * L).to(tl.int64)
        j_hi = tl.minimum(j_lo + L, n_chunks)
    offs_k = tl.arange(0, DK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    offs_c = tl.arange(0, C)
    slot = tl.load(slot_ptr + i_n).to(tl.int64)
    s_base = state_ptr + slot * ss_s + i_h * ss_h
    # the state tile's element offsets for a [DK, BV] tile, or [BV, DK] with ST
    pool_grid = _tile_grid(offs_k, offs_v, ss_k, ss_v, ST)
    if PHASE == 0:
        carry = carry_ptr + (i_n * HV + i_h).to(tl.int64) * DK * DV + _tile_grid(offs_k, offs_v, DV, 1, ST)
    else:
        pair = (i_n * NP + part).to(tl.int64) * HV + i_h
        offs_t = offs_v - DV  # the transition's columns, in trans programs
        carry = start_ptr + pair * DK * DV + _tile_grid(offs_k, offs_v, DV, 1, ST)  # start[part]
    if PHASE == 2:
        S = tl.load(carry)  # fp32, the combined state before this part
    elif PHASE == 1:
        if trans:
            S = tl.where(_tile_grid(offs_k, offs_t, 1, -1, ST) == 0, 1.0, 0.0)  # identity columns
        elif part > 0:
            S = _zero_tile(DK, BV, ST)
        elif (tl.load(init_ptr + i_n) != 0) & (slot >= 0):
            S = tl.load(s_base + pool_grid).to(tl.float32)
        else:
            S = _zero_tile(DK, BV, ST)
    elif j_lo > 0:
        S = tl.load(carry)  # fp32
    elif (tl.load(init_ptr + i_n) != 0) & (slot >= 0):  # a negative slot: no pool state, from zero
        S = tl.load(s_base + pool_grid).to(tl.float32)
    else:
        S = _zero_tile(DK, BV, ST)
    row = bos + j_lo * C
    if ST:
        tl.static_assert(PHASE != 1, "the parts' first phase holds the state as [DK, BV]")
        S, row = _scan_chunks_st(S, row, j_lo, j_hi, c0, eos, i_h, i_kh, qn_src, kn_src, v_ptr, o_ptr, g_ptr,
                                 tq_src, sv_t, sv_h, so_t, so_h, offs_k, offs_v, offs_c, HV, HK, DK, C,
                                 TMA)  # fmt: skip
    elif PHASE != 1:
        S, row = _scan_chunks(S, row, j_lo, j_hi, c0, eos, i_h, i_kh, qn_src, kn_src, v_ptr, o_ptr, g_ptr, tq_src,
                              sv_t, sv_h, so_t, so_h, offs_k, offs_v, offs_c, HV, HK, DK, DV, C, True, TMA)  # fmt: skip
    elif (part == 0) & (trans == 0):  # phase 1's only outputs: part 0's
        S, row = _scan_chunks(S, row, j_lo, j_hi, c0, eos, i_h, i_kh, qn_src, kn_src, v_ptr, o_ptr, g_ptr, tq_src,
                              sv_t, sv_h, so_t, so_h, offs_k, offs_v, offs_c, HV, HK, DK, DV, C, True, TMA)  # fmt: skip
    else:
        S, row = _scan_chunks(S, row, j_lo, j_hi, c0, eos, i_h, i_kh, qn_src, kn_src, v_ptr, o_ptr, g_ptr, tq_src,
                              sv_t, sv_h, so_t, so_h, offs_k, offs_v, offs_c, HV, HK, DK, DV, C, False,
                              TMA)  # fmt: skip
    # (row - bos - j_hi * C) == 0, but loop-carried: keeps the state tile's store pointers from being
    # computed before the loop and held in registers through it
    zero = row - bos - j_hi * C
    pool = s_base + zero + pool_grid
    if PHASE == 0:
        if j_hi < n_chunks:
            tl.store(carry + zero, S)
        elif slot >= 0:  # a negative slot's final state is not written
            tl.store(pool, S.to(state_ptr.dtype.element_ty))
    elif last:
        if slot >= 0:
            tl.store(pool, S.to(state_ptr.dtype.element_ty))
    elif PHASE == 1:
        if trans:
            tl.store(trans_ptr + pair * DK * DK + zero + _tile_grid(offs_k, offs_t, DK, 1, ST), S)
        else:
            tl.store(carry + HV * DK * DV + zero, S)  # start[part + 1]


@triton.jit
def _tile_grid(offs_k, offs_v, sk, sv, ST: tl.constexpr):
    """Offsets ``k * sk + v * sv`` as a [DK, BV] grid, or as [BV, DK] with ``ST``."""
    if ST:
        grid = offs_v[:, None] * sv + offs_k[None, :] * sk
    else:
        grid = offs_k[:, None] * sk + offs_v[None, :] * sv
    return grid


@triton.jit
def _zero_tile(DK: tl.constexpr, BV: tl.constexpr, ST: tl.constexpr):
    """A zero fp32 state tile, [DK, BV] or with ``ST`` [BV, DK]."""
    if ST:
        tile = tl.zeros([BV, DK], dtype=tl.float32)
    else:
        tile = tl.zeros([DK, BV], dtype=tl.float32)
    return tile


@triton.jit
def _chunk_qk(row, eos, c, i_kh, qn_src, kn_src, offs_k, offs_c, HK: tl.constexpr, DK: tl.constexpr,
              C: tl.constexpr, WITH_Q: tl.constexpr, TMA: tl.constexpr):  # fmt: skip
    """The scan's token rows of global chunk ``c`` at ``row`` (``r [C]``, in-sequence mask ``m``) and its
    fp16 normalised q (rows of norm ``scale``; only ``WITH_Q``, else kn again) and k (unit rows), [C, DK].
    ``TMA``: one copy per tile of the prep's zero-padded chunk-major rows, no addresses or masks per
    thread; else masked loads from [T, HK, DK]."""
    r = row + offs_c  # [C]
    m = r < eos
    if TMA:
        blk = ((c * HK + i_kh) * C).to(tl.int32)
        if WITH_Q:
            qn = qn_src.load([blk, 0])  # [C, DK]
        kn = kn_src.load([blk, 0])  # [C, DK]
    else:
        n_off = r[:, None] * HK * DK + i_kh * DK + offs_k[None, :]
        if WITH_Q:
            qn = tl.load(qn_src + n_off, mask=m[:, None], other=0.0)  # [C, DK]
        kn = tl.load(kn_src + n_off, mask=m[:, None], other=0.0)  # [C, DK]
    if not WITH_Q:
        qn = kn
    return r, m, qn, kn


@triton.jit
def _chunk_mats(r, row, cbase, g_ptr, tq_src, offs_c, C: tl.constexpr, WITH_AQK: tl.constexpr,
                TMA: tl.constexpr):  # fmt: skip
    """The chunk's cumulative log-decay G [C] and its last entry, Tb [C, C] and (only ``WITH_AQK``, else
    Tb again) Aqk [C, C] (fp16) for chunk-head pair ``cbase`` (``TMA``: from the descriptor's
    [chunks * HV * 2 * C, C] view of the pairs)."""
    G = tl.load(g_ptr + cbase * C + offs_c)  # [C]
    g_last = tl.load(g_ptr + cbase * C + C - 1)
    if TMA:
        tb = tq_src.load([(cbase * 2 * C).to(tl.int32), 0])  # [C, C]
        if WITH_AQK:
            aqk = tq_src.load([(cbase * 2 * C + C).to(tl.int32), 0])  # [C, C]
    else:
        # row offsets from the loop-carried `row`, so the [C, C] offset tensor is not hoisted (and kept live)
        t_rows = (r - row) * C
        tile = tq_src + cbase * 2 * C * C + t_rows[:, None] + offs_c[None, :]
        tb = tl.load(tile)  # [C, C]
        if WITH_AQK:
            aqk = tl.load(tile + C * C)  # [C, C]
    if not WITH_AQK:
        aqk = tb
    return G, g_last, tb, aqk


@triton.jit
def _scan_chunks_st(S, row, j_lo, j_hi, c0, eos, i_h, i_kh, qn_src, kn_src, v_ptr, o_ptr, g_ptr, tq_src, sv_t,
                    sv_h, so_t, so_h, offs_k, offs_v, offs_c, HV: tl.constexpr, HK: tl.constexpr,
                    DK: tl.constexpr, C: tl.constexpr, TMA: tl.constexpr):  # fmt: skip
    """``_scan_chunks`` (with outputs) on the transposed state tile ``S [BV, DK]``: every product is
    transposed so that its left operand (the state, X, Vn, the decayed Vn) comes from registers and only
    the chunk's q, k, Tb and Aqk are read from shared memory, once per product (BV 64: wgmma's M;
    smaller tiles compile to mma.sync, whose operands all come from registers)."""
    for j in range(j_lo, j_hi):
        r, m, qn, kn = _chunk_qk(row, eos, c0 + j, i_kh, qn_src, kn_src, offs_k, offs_c, HK, DK, C, True, TMA)
        vt = tl.load(
            v_ptr + r[None, :] * sv_t + i_h * sv_h + offs_v[:, None], mask=m[None, :], other=0.0
        )  # [BV, C]
        G, g_last, tb, aqk = _chunk_mats(r, row, (c0 + j) * HV + i_h, g_ptr, tq_src, offs_c, C, True, TMA)
        eg = tl.exp(G)
        s16 = S.to(tl.float16)  # [BV, DK]
        xt = vt.to(tl.float32) - tl.dot(s16, tl.trans(kn)) * eg[None, :]  # [BV, C]: X^T
        vnt = tl.dot(xt.to(tl.float16), tl.trans(tb))  # [BV, C]: Vn^T = X^T Tb^T
        ot = tl.dot(s16, tl.trans(qn)) * eg[None, :] + tl.dot(vnt.to(tl.float16), tl.trans(aqk))  # [BV, C]
        tl.store(
            o_ptr + r[None, :] * so_t + i_h * so_h + offs_v[:, None],
            ot.to(o_ptr.dtype.element_ty),
            mask=m[None, :],
        )
        yt = (vnt * tl.exp(g_last - G)[None, :]).to(tl.float16)  # [BV, C]
        S = S * tl.exp(g_last) + tl.dot(yt, kn)  # [BV, DK]
        row += C
    return S, row


@triton.jit
def _scan_chunks(S, row, j_lo, j_hi, c0, eos, i_h, i_kh, qn_src, kn_src, v_ptr, o_ptr, g_ptr, tq_src, sv_t, sv_h,
                 so_t, so_h, offs_k, offs_v, offs_c, HV: tl.constexpr, HK: tl.constexpr, DK: tl.constexpr,
                 DV: tl.constexpr, C: tl.constexpr, OUT: tl.constexpr, TMA: tl.constexpr):  # fmt: skip
    """The scan's loop over a sequence's chunks [j_lo, j_hi) from state ``S [DK, BV]`` (fp32) at token
    ``row``: (S, row) after them. ``OUT``: write the chunks' output rows; without, the columns
    ``offs_v >= DV`` see v = 0 (a transition matrix's). A loop of its own per ``OUT``: a branch inside
    the loop would keep Triton from pipelining its loads."""
    for j in range(j_lo, j_hi):
        r, m, qn, kn = _chunk_qk(row, eos, c0 + j, i_kh, qn_src, kn_src, offs_k, offs_c, HK, DK, C, OUT, TMA)
        v_ok = m[:, None]
        if not OUT:
            v_ok = v_ok & (offs_v[None, :] < DV)
        vc = tl.load(v_ptr + r[:, None] * sv_t + i_h * sv_h + offs_v[None, :], mask=v_ok, other=0.0)
        G, g_last, tb, aqk = _chunk_mats(r, row, (c0 + j) * HV + i_h, g_ptr, tq_src, offs_c, C, OUT, TMA)
        eg = tl.exp(G)
        s16 = S.to(tl.float16)
        x = vc.to(tl.float32) - eg[:, None] * tl.dot(kn, s16)  # [C, BV]
        vn = tl.dot(tb, x.to(tl.float16))  # [C, BV]
        if OUT:
            vn16 = vn.to(tl.float16)
            o = eg[:, None] * tl.dot(qn, s16) + tl.dot(aqk, vn16)
            tl.store(
                o_ptr + r[:, None] * so_t + i_h * so_h + offs_v[None, :],
                o.to(o_ptr.dtype.element_ty),
                mask=m[:, None],
            )
        y = (tl.exp(g_last - G)[:, None] * vn).to(tl.float16)  # [C, BV]
        S = S * tl.exp(g_last) + tl.dot(tl.trans(kn), y)
        row += C
    return S, row


@triton.jit(do_not_specialize=["L", "NP"])
def _chunk_combine_kernel(start_ptr, trans_ptr, cu_ptr, L, NP, HV: tl.constexpr, DK: tl.constexpr,
                          DV: tl.constexpr, BV: tl.constexpr, C: tl.constexpr):  # fmt: skip
    """Between the scan's phases 1 and 2, for one (sequence, value head, BV state columns): the state
    before each part p >= 2, start[p] <- trans[p - 1] start[p - 1] + start[p], in part order (start[1] is
    part 0's final state, start[p] for p >= 2 the local state part p - 1 reached from zero). Products in
    tf32x3 (about fp32's precision: an error here reaches every later part). The state stays in
    registers, so the loads of the next step (never written by this kernel before it reads them) may run
    ahead."""
    pid_v = tl.program_id(0)
    i_h = tl.program_id(1)
    i_n = tl.program_id(2)
    n_chunks = tl.cdiv(tl.load(cu_ptr + i_n + 1) - tl.load(cu_ptr + i_n), C)
    n_parts = tl.maximum(tl.cdiv(n_chunks, L), 1)
    if n_parts <= 2:
        return
    offs_k = tl.arange(0, DK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    tile = offs_k[:, None] * DV + offs_v[None, :]  # [DK, BV]
    square = offs_k[:, None] * DK + offs_k[None, :]  # [DK, DK]
    first = (i_n * NP).to(tl.int64) * HV + i_h
    S = tl.load(start_ptr + (first + HV) * DK * DV + tile)  # [DK, BV] part 0's final state
    for p in range(1, n_parts - 1):
        pair = first + p * HV
        M = tl.load(trans_ptr + pair * DK * DK + square)  # [DK, DK] part p's transition
        nxt = start_ptr + (pair + HV) * DK * DV + tile
        S = tl.dot(M, S, input_precision="tf32x3") + tl.load(nxt)
        tl.store(nxt, S)


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
    t = q.shape[0]
    n_chunks = triton.cdiv(t, CHUNK)  # T in chunks; each sequence's partial last chunk may add one more
    n_chunk_max = n_chunks + nb
    pipelined = _pipelined(q.device, n_chunk_max, nb, hv, dv // min(_bv_one_pass(nb, hv, dv), dv))
    bv_default, stages, transposed = _scan_tiles(q.device, nb, hv, dv, pipelined)
    precision = _inverse_precision(q.device)
    cfg = {
        "BV": bv_default,
        "num_warps": 4,
        "num_stages": stages,
        # the one-pass / segment scan on transposed state tiles (`_scan_chunks_st`; the plan's BV 64)
        "transposed": transposed,
        "prep_warps": 4,
        # one warp with fp16 products (H200: 58 us against 90 at two warps); the measured two elsewhere
        "inverse_warps": 1 if precision == "fp16" else 2,
        "inverse_precision": precision,
        "diag_precision": precision,
        # A's lower blocks between prep and inverse in fp16 (the products round them to 10 bits anyway)
        "a_fp16": precision == "fp16",
        # register caps (ptxas maxnreg; 0: the compiler's choice). The prep at 168 (from 240; a few
        # bytes of spills) fits 3 programs per SM instead of 2: H200, 16/32 x 8 x 2048 prep 157 -> 139 us.
        # Hopper only, where it was measured (other cards compile the Gram products differently).
        "prep_maxnreg": _PREP_MAXNREG_HOPPER if _is_hopper(q.device) else 0,
        "inverse_maxnreg": 0,
        "segment_chunks": 128 if pipelined else 0,
        "first_segment": 16,
        # the parts' scans want several programs per SM, so fewer pipeline buffers (3 stages: 154 KB of
        # shared memory per program at BV 16, 2 stages: 105 KB)
        "part_stages": 2,
        # sequences cut into parts of this many chunks (0: none), from the mean sequence length (the
        # lengths stay on the device) and at most 16 parts for the whole batch
        "part_chunks": _part_chunks(q.device, n_chunks, nb, nb * hv * max(1, dv // 32)),
        # the scan reads q, k, Tb and Aqk by TMA (None: long sequences on Hopper at BV <= 32, ``_use_tma``)
        "tma": None,
    }
    if _config:
        unknown = sorted(set(_config) - set(cfg))
        if unknown:
            raise ValueError(f"_config: unknown keys {unknown}; known: {sorted(cfg)}")
        cfg.update(_config)
    part_len = cfg["part_chunks"]
    if part_len < 0:
        raise ValueError(f"_config: part_chunks must be 0 (no parts) or positive, got {part_len}")
    if part_len and cfg["part_stages"] < 2:
        # an earlier form of the parts' scan faulted (illegal address) at 1 stage on an H200; untested since
        raise ValueError(f"_config: part_stages must be at least 2, got {cfg['part_stages']}")
    # parts leave enough programs for 32-column tiles (half the q/k traffic per state column)
    bv = min(cfg["BV"] if _config and "BV" in _config else (32 if part_len else bv_default), dv)
    if cfg["transposed"] and not (_config and _config.get("transposed")) and (bv != bv_default or part_len):
        cfg["transposed"] = False  # the plan's choice, overridden by the caller's BV or parts
    if cfg["transposed"] and part_len:
        raise ValueError(f"_config: the transposed scan takes no parts, got part_chunks {part_len}")
    if cfg["tma"] is None:
        tma = _use_tma(q.device, bv, bool(cfg["transposed"]), part_len > 0, n_chunks // nb)
    else:
        tma = bool(cfg["tma"])
    if scale is None:
        scale = dk**-0.5
    o = torch.empty(t, hv, dv, dtype=q.dtype, device=q.device)
    c = CHUNK
    g_buf = torch.empty(n_chunk_max, hv, c, dtype=torch.float32, device=q.device)
    # normalised q, k: chunk-major for TMA (the prep zero-pads each sequence's last chunk), else token-major
    n_shape = (n_chunk_max, hk, c, dk) if tma else (t, hk, dk)
    kn_buf = torch.empty(n_shape, dtype=torch.float16, device=q.device)
    qn_buf = torch.empty(n_shape, dtype=torch.float16, device=q.device)
    tq_buf = torch.empty(n_chunk_max, hv, 2, c, c, dtype=torch.float16, device=q.device)  # Tb, Aqk
    scan_src = (qn_buf, kn_buf, tq_buf)
    if tma:
        if tq_buf.numel() // c >= 2**31 or kn_buf.numel() // dk >= 2**31:  # TMA coordinates are int32
            raise ValueError(f"q: {t} tokens over {nb} sequences is past the TMA scan's int32 tile rows")
        scan_src = (
            TensorDescriptor.from_tensor(qn_buf.view(-1, dk), [c, dk]),
            TensorDescriptor.from_tensor(kn_buf.view(-1, dk), [c, dk]),
            TensorDescriptor.from_tensor(tq_buf.view(-1, c), [c, c]),
        )
    a_dtype = torch.float16 if cfg["a_fp16"] else torch.float32
    a_buf = torch.empty(n_chunk_max, hv, 10, 16, 16, dtype=a_dtype, device=q.device)  # A's lower blocks
    segments = _segments(n_chunk_max, cfg["first_segment"], 0 if part_len > 0 else cfg["segment_chunks"])
    # fp32 state between segments (one segment: never touched, any fp32 buffer will do)
    carry = torch.empty(nb, hv, dk, dv, dtype=torch.float32, device=q.device) if len(segments) > 1 else g_buf
    block_b = _next_pow2(nb + 1)
    ss = logical_state_strides(state, state_layout, 1)

    def prep(lo: int, hi: int) -> None:
        _chunk_prep_kernel[(hi - lo, hk)](
            q, k, a, b, A_log, dt_bias, cu_seqlens, g_buf, kn_buf, qn_buf, tq_buf, a_buf, nb, lo, scale,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), a.stride(0), b.stride(0),
            HV=hv, HK=hk, GROUP=hv // hk, DK=dk, C=c, BLOCK_B=block_b, CHUNK_MAJOR=tma, num_warps=cfg["prep_warps"],
            **_maxnreg(cfg["prep_maxnreg"]),
        )  # fmt: skip
        _chunk_inverse_kernel[(hi - lo, hv)](
            a_buf, b, cu_seqlens, tq_buf, nb, lo, b.stride(0), HV=hv, C=c, BLOCK_B=block_b,
            PD=cfg["diag_precision"], P=cfg["inverse_precision"], num_warps=cfg["inverse_warps"],
            **_maxnreg(cfg["inverse_maxnreg"]),
        )  # fmt: skip

    def scan(lo: int, hi: int, phase: int = 0, parts: tuple = (None, None, 0, 1)) -> None:
        """``_chunk_scan_kernel``: global chunks [lo, hi) (PHASE 0), or a parts phase with ``parts`` =
        (start, trans, part_len, n_parts)."""
        start, trans, part_len, n_parts = parts
        v_tiles = (dv + dk) // bv if phase == 1 else dv // bv  # phase 1: + the transition's tiles
        _chunk_scan_kernel[(v_tiles, hv, nb * n_parts)](
            *scan_src[:2], v, o, cu_seqlens, g_buf, scan_src[2], state, state_slots, has_initial_state, carry,
            carry if start is None else start, carry if trans is None else trans, lo, hi, part_len, n_parts,
            v.stride(0), v.stride(1), o.stride(0), o.stride(1), *ss,
            HV=hv, HK=hk, GROUP=hv // hk, DK=dk, DV=dv, BV=bv, C=c, BLOCK_B=block_b, PHASE=phase,
            ST=bool(cfg["transposed"]) and phase == 0, TMA=tma,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"] if phase == 0 else cfg["part_stages"],
        )  # fmt: skip

    if part_len > 0:
        # parts of every sequence scanned side by side: local states and transitions, their combination
        # in part order, then the outputs from the combined states (``_chunk_scan_kernel`` PHASE 1, 2)
        n_parts = triton.cdiv(n_chunks, part_len)  # bound: parts of a sequence of all T tokens
        if nb * n_parts > 65535:
            raise ValueError(
                f"_config: part_chunks={part_len} gives {nb} x {n_parts} parts, over the grid limit"
            )
        start = torch.empty(nb * n_parts, hv, dk, dv, dtype=torch.float32, device=q.device)
        trans = torch.empty(nb * n_parts, hv, dk, dk, dtype=torch.float32, device=q.device)
        parts = (start, trans, part_len, n_parts)
        prep(0, n_chunk_max)
        scan(0, 0, 1, parts)
        _chunk_combine_kernel[(dv // 16, hv, nb)](
            start, trans, cu_seqlens, part_len, n_parts, HV=hv, DK=dk, DV=dv, BV=16, C=c, num_warps=8,
        )  # fmt: skip
        scan(0, 0, 2, parts)
        return o
    if len(segments) == 1 or not q.is_cuda:
        for lo, hi in segments:
            prep(lo, hi)
            scan(lo, hi)
        return o
    # Pipelined: segment i's prep runs on this stream while segment i - 1's scan (latency-bound, one
    # program per SM) runs on a high-priority side stream. Every buffer is allocated on this stream and
    # this stream waits for the side stream's last scan before returning, so no record_stream is needed.
    main = torch.cuda.current_stream(q.device)
    side = _scan_stream(q.device)
    for lo, hi in segments:
        prep(lo, hi)
        ready = torch.cuda.Event()
        ready.record(main)
        side.wait_event(ready)
        with torch.cuda.stream(side):
            scan(lo, hi)
    done = torch.cuda.Event()
    done.record(side)
    main.wait_event(done)
    return o


def _bv_one_pass(nb: int, hv: int, dv: int) -> int:
    """The scan's column tile before ``_scan_tiles``' choice: 32 halves the programs' shared q/k traffic
    against 16 but leaves too few programs to fill the card for one sequence with few heads (Hv 8)."""
    return 32 if hv * nb * max(1, dv // 32) >= 96 else 16


def _scan_tiles(device: torch.device, nb: int, hv: int, dv: int, pipelined: bool) -> tuple[int, int, bool]:
    """(BV, pipeline stages, transposed state tiles) of the scan. Its programs are latency-bound
    chains, one per SM at 3 stages (160 KB of shared memory at BV 32); 2 stages (100-111 KB) let two
    share an SM, which pays once there are more programs than SMs. Then the transposed scan
    (``_scan_chunks_st``: BV 64, every product's left operand in registers) does the same work with
    a third of the shared-memory reads. H200, 16/32, device wall ms (scripts/gdn_parts_probe.py,
    BENCHMARKS.md), BV 32 at 3 stages -> 2 stages -> transposed at 2 stages: 8 x 2048 0.755 -> 0.665 ->
    0.562, 4 x 8192 1.446 -> 1.289 -> 1.080, 8 x 1024 0.399 -> 0.348 -> 0.298. With one program per SM
    or fewer, 3 stages and BV 32 stay best: 1 x 4096 (128 programs) 0.193, against 0.239 at 2 stages
    and 0.272 transposed (64 programs). In pipelined segments the prep runs beside the scan, so there
    the scan of one sequence takes 64 columns once BV 32 would give more programs than SMs: 16/64 x 32k
    2.617 (BV 32, 3 stages), 2.481 (BV 32, 2), 2.188 (transposed), 2.101 (BV 64, 3)."""
    bv = _bv_one_pass(nb, hv, dv)
    sms = num_sms(device) if device.type == "cuda" else 0
    if not sms or nb * hv * max(1, dv // bv) <= sms:
        return bv, 3, False
    if pipelined:
        # segments run in global chunk order, so with several sequences a segment's scan mostly holds
        # one of them: 16/32 x 2 x 16384 took 1.60 ms at BV 64 against 1.33 at BV 32
        return (64, 3, False) if dv >= 64 and nb == 1 else (bv, 3, False)
    if dv % 64 == 0 and nb * hv * (dv // 64) > sms:
        return 64, 2, True
    return bv, 2, False


def _use_tma(device: torch.device, bv: int, transposed: bool, parts: bool, mean_chunks: int) -> bool:
    """Whether the scan reads its chunk tiles by TMA: on Hopper (where it was measured), one pass or
    segments (no parts) with column tiles of at most 32 (one program per SM, bound by its instruction
    stream), over sequences of ``_TMA_MIN_CHUNKS`` chunks and more on average.

    Each TMA scan launch costs the host ~20-50 us more (descriptors built and encoded per launch), so
    TMA is kept to the long scans that save more device time than that, where a model's prefill is
    bound by the device anyway. H200 device ms, pointers -> TMA (scripts/gdn_parts_probe.py,
    scripts/gdn_prefill_host_probe.py, BENCHMARKS.md): 2/8 x 2 x 16384 (BV 16) 0.417 -> 0.381,
    16/32 x 32768 (BV 32, five segment launches) 1.089 -> 1.045; 16/32 x 4096 0.161 -> 0.159 and
    2/8 x 32768 in parts 0.478 -> 0.473, less than the host adds. At BV 64 TMA lost: 16/64 x 32768
    1.582 -> 1.733, transposed 16/32 x 8 x 2048 0.427 -> 0.450 (the scan compiled to 255 registers and
    spilled)."""
    return _is_hopper(device) and bv <= 32 and not transposed and not parts and mean_chunks >= _TMA_MIN_CHUNKS


def _pipelined(device: torch.device, n_chunk_max: int, nb: int, hv: int, v_tiles: int) -> bool:
    """Whether to overlap prep and scan in segments: the scan leaves the card mostly idle (at most two
    programs per SM) and the prep is big enough to hide its extra launches (chunks x value heads at
    least 8192, e.g. 16k tokens at Hv 32). H200 device times in the module docstring; below the
    threshold (e.g. Hv 8 at 32k) the gain is ~0.03 ms and host time grows more."""
    if device.type != "cuda" or n_chunk_max * hv < 8192:
        return False
    return nb * hv * v_tiles <= 2 * num_sms(device)


def _part_chunks(device: torch.device, total_chunks: int, nb: int, tiles: int) -> int:
    """Chunks per part when the scan should cut sequences into parts (0: none), for ``nb`` sequences of
    ``total_chunks`` chunks together and ``tiles`` scan programs per part (sequences x value heads x
    32-column tiles).

    Parts pay off when one pass leaves most SMs idle over a long sequence, although they cost about
    twice the scan's products (phase 1 also carries the transitions). H200, one sequence at Hv 8
    (Qwen3.5-397B at TP8): 32k tokens 0.82 -> 0.55 ms, 64k 1.56 -> 1.04, 16k 0.41 -> 0.29, 8k 0.21 -> 0.16;
    Hv 4 x 32k 0.76 -> 0.33. At Hv 16 (64 tiles) parts tied with the pipelined segments, and at Hv 32
    the one-pass scan fills the card (scripts/gdn_parts_probe.py, BENCHMARKS.md). The part count aims at
    about 1.7 phase-2 programs per SM (two fit: 105 KB of shared memory each) and follows the mean
    length; no sequence gets more than ``_PARTS_MAX`` parts, however unequal the lengths (the combine
    walks a sequence's parts in order, ~2.5 us each)."""
    mean = total_chunks // max(nb, 1)
    if device.type != "cuda" or mean < _PARTS_MIN_CHUNKS or tiles > _PARTS_MAX_TILES:
        return 0
    n_parts = min(_PARTS_MAX, 1 + max(1, round(_PARTS_PER_SM * num_sms(device) / tiles)))
    return max(triton.cdiv(mean, n_parts), triton.cdiv(total_chunks, _PARTS_MAX))


_PREP_MAXNREG_HOPPER = 168  # the prep's register cap on sm_90 (three programs per SM)

_TMA_MIN_CHUNKS = 128  # sequences of 8192 tokens and more, on average
_PARTS_MIN_CHUNKS = 128  # sequences of 8192 tokens and more (measured down to there)
_PARTS_MAX_TILES = 32  # Hv 16 (64 tiles) in 5 parts: 0.89 ms against 0.88 in pipelined segments
_PARTS_PER_SM = 1.7
_PARTS_MAX = 16


def _nvidia_major(device: torch.device) -> int:
    """The compute capability's major version of an NVIDIA card, 0 for anything else (CPU, ROCm)."""
    return capability(device)[0] if device.type == "cuda" and torch.version.hip is None else 0


def _inverse_precision(device: torch.device) -> str:
    """fp16 tensor-core products on NVIDIA cards from sm_80 on, exact fp32 FMA elsewhere."""
    return "fp16" if _nvidia_major(device) >= 8 else "ieee"


def _is_hopper(device: torch.device) -> bool:
    """An NVIDIA sm_90 card (H100 / H200), where the launch settings in ``gdn_prefill`` were measured."""
    return _nvidia_major(device) == 9


def _maxnreg(cap: int) -> dict:
    """Launch options for a register cap (none for 0)."""
    return {"maxnreg": cap} if cap else {}


_SCAN_STREAMS: dict[int, torch.cuda.Stream] = {}


def _scan_stream(device: torch.device) -> torch.cuda.Stream:
    """The per-device highest-priority side stream of the pipelined scan."""
    idx = device_index(device)
    if idx not in _SCAN_STREAMS:
        _SCAN_STREAMS[idx] = torch.cuda.Stream(device=idx, priority=-100)  # clamped to the highest
    return _SCAN_STREAMS[idx]


def _segments(n_chunks: int, first: int, size: int) -> list[tuple[int, int]]:
    """[lo, hi) global chunk ranges: one if size is 0, else `first` (if > 0) then `size` at a time."""
    if size <= 0 or n_chunks <= max(first, size):
        return [(0, n_chunks)]
    bounds = [0] + ([first] if first > 0 else [])
    while bounds[-1] + size < n_chunks:
        bounds.append(bounds[-1] + size)
    return list(zip(bounds, bounds[1:] + [n_chunks]))
