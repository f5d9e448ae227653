"""Triton block-FP8 GEMV for a few rows: ``y [M, N] = x [M, K] Wᵀ (+ b)``, any row map.

At one or two tokens the block-FP8 GEMM is a weight read, and the MMA kernel's fixed costs (split-K
partials, the arrival counter, a shared-memory round trip per K step) are most of its time. This kernel
streams instead: a program owns ``BN`` weight rows and walks K in ``BK``-wide steps, widening each
e4m3 tile in registers and adding its scaled 8-column chunk sums for every activation row into an fp32
accumulator; one row sum at the end, no split, no second pass. It is bound by the weight bytes in
flight per SM, which the registers per program set: each activation row adds registers, so past two
rows the swap-AB MMA kernel wins (``CONFIG["gemv_m_max"]`` in ``kernels.py``).
Each step gathers its weight scales (row ``row_block[n]``, or ``n // 128`` for the plain map; one per
8-column chunk, from L1).

Layout trap: tiles are ``[chunks, BN, 8]`` or ``[BN, chunks, 8]`` and each activation row is loaded
broadcast to that shape (the rows hit L1). Weight and activations then share one register layout (8
elements per thread). With ``[BN, BK]`` tiles Triton gives the e4m3 weight 16-wide and the bf16
activations 8-wide vectors and converts one through shared memory every step; a per-column scale gather
does the same. How a warp's lanes split over the two leading axes decides the rest, and Triton gives the
lanes to whichever tied axis its version prefers (``chunk_axis``). Lanes along the chunks give each
thread all ``BN`` weight rows of its chunks, so one activation chunk in registers serves them all. bf16
and e4m3 rows take that (H200, same process, chunk-major against row-major: M=1 12288x2048 9.5 against
10.1 us, M=2 2048x4096 5.8 against 6.5 us); fp32 rows keep lanes along the weight rows (chunk-major took
12.7-13.9 against 9.9 us there; BENCHMARKS.md 2026-11-29 ~06:30). A third tile axis for
the activation rows would tie too and take lanes itself, hence one accumulator per row (two at most).

Activations (constexpr ``A_MODE``, as in ``kernels.py``): 0 bf16/fp16/fp32 (W8A16), 1 e4m3 with
per-token-group scales (pre-quantised). W8A8 quantising the rows runs a small quant kernel ahead
(overlapped by PDL): one row in mode 1 on its e4m3 values and scales, two in mode 0 on
``kernels.fake_quant``'s fp32 values (fp32 rows cost registers, e4m3 rows the scale per chunk).
Quantising the row inside this kernel cost more: 1.5x the swap-AB kernel's time on an H100 (per element
of the tile), 0.9-1.4 us over the two kernels on an H200 (once per program, compact layout, 2026-11-29;
BENCHMARKS.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltaserve.ops.pdl import gdc_launch_dependents, gdc_wait, pdl_launch, use_pdl

MAX_ROWS = 2  # activation rows per call (one accumulator each)

# Which axis of a load's tile gets a warp's lanes first when the axes tie on contiguity (here: the two
# leading axes): Triton up to 3.6 takes the leading one, 3.7 and later the one nearest the contiguous axis
_TIES_GO_LEADING = tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 7)


def chunk_axis(chunk_major: bool) -> int:
    """The tile axis (0 or 1) to put the K chunks on so that a warp's lanes go along the chunks
    (``chunk_major``) or along the weight rows."""
    return 0 if chunk_major == _TIES_GO_LEADING else 1


@triton.jit
def _row_part(wf, scale, x_row, xs_row, k, K, grp, KB, A_MODE: tl.constexpr):
    """One activation row's share of a K step: ``wf · x`` summed per 8-column chunk, times the chunk's
    scale (``wf [D0, D1, 8]`` the widened weights, ``k`` their columns, ``grp [D0, D1]`` each chunk's
    scale group; columns past ``K`` and groups past the ``KB``-th read as zero)."""
    xv = tl.load(x_row + k, mask=k < K, other=0.0).to(tl.float32)  # [D0, D1, 8]
    if A_MODE == 1:
        scale = scale * tl.load(xs_row + grp, mask=grp < KB, other=0.0)
    # the scale multiplies each chunk's sum, not each product: 64 -> 44 registers at (2, 2048, 4) in the
    # sm_90 compile, so more programs and weight bytes in flight per SM (H200, M=1 12288x2048: 11.4 ->
    # 10.3 us; BENCHMARKS.md, 2026-11-29)
    return tl.sum(wf * xv, 2) * scale  # [D0, D1]


@triton.jit
def _products(w, x_ptr, xs_ptr, sx, sxs, s_rows, k0, kr, grp0, K, A_MODE: tl.constexpr,
              BLOCK_K: tl.constexpr, ROWS: tl.constexpr):  # fmt: skip
    """The K step at ``k0`` for rows 0 and 1 (``ROWS`` 2; with 1 row the second is the first again):
    ``[D0, D1]`` fp32 chunk sums each (``w [D0, D1, 8]`` the e4m3 weights, ``kr`` their columns and
    ``grp0 [D0, D1]`` each chunk's first column from ``k0``; ``s_rows`` the weight rows' scale-row
    pointers, broadcastable to ``[D0, D1]``)."""
    k = k0 + kr  # [D0, D1, 8]
    grp = (k0 + grp0) // BLOCK_K  # [D0, D1] group of each 8-column chunk
    kb = tl.cdiv(K, BLOCK_K)
    scale = tl.load(s_rows + grp, mask=grp < kb, other=0.0)  # [D0, D1]
    wf = w.to(tl.float32)
    p0 = _row_part(wf, scale, x_ptr, xs_ptr, k, K, grp, kb, A_MODE)
    p1 = p0
    if ROWS == 2:
        p1 = _row_part(wf, scale, x_ptr + sx, xs_ptr + sxs, k, K, grp, kb, A_MODE)
    return p0, p1


@triton.jit
def _fp8_gemv_kernel(
    x_ptr, xs_ptr, w_ptr, s_ptr, rb_ptr, bias_ptr, y_ptr, N, K, sx, sxs, sy, sw_n, ss_r,
    A_MODE: tl.constexpr, HAS_BIAS: tl.constexpr, PLAIN: tl.constexpr, ROWS: tl.constexpr, BN: tl.constexpr,
    BK: tl.constexpr, BLOCK_K: tl.constexpr, PLAIN_BN_C: tl.constexpr, CA: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    # ROWS (1 or 2) activation rows; tiles are [D0, D1, 8] with the K chunks on axis CA (0 or 1) and the
    # weight rows on the other
    pid = tl.program_id(0)
    n = pid * BN + tl.arange(0, BN)  # [BN]
    n_ok = n < N
    if PLAIN:
        srow = n // PLAIN_BN_C
    else:
        srow = tl.load(rb_ptr + n, mask=n_ok, other=0)
    nd = tl.expand_dims(n, CA)  # [1, BN] or [BN, 1]
    s_rows = s_ptr + tl.expand_dims(srow.to(tl.int64), CA) * ss_r  # as nd
    grp0 = tl.expand_dims(tl.arange(0, BK // 8) * 8, 1 - CA)  # [BK/8, 1] or [1, BK/8]
    kr = (grp0 + 0 * nd)[:, :, None] + tl.arange(0, 8)[None, None, :]  # [D0, D1, 8]
    w_rows = w_ptr + nd.to(tl.int64)[:, :, None] * sw_n  # [D0 | 1, D1 | 1, 1]
    w_ok = tl.expand_dims(n_ok, CA)[:, :, None]
    # the first weight tile is read before waiting on the previous kernel (PDL: weights are constant)
    w = tl.load(w_rows + kr, mask=w_ok & (kr < K), other=0.0)  # [D0, D1, 8]
    if PDL:
        gdc_wait()
    acc0, acc1 = _products(w, x_ptr, xs_ptr, sx, sxs, s_rows, 0, kr, grp0, K, A_MODE, BLOCK_K, ROWS)
    for k0 in range(BK, K, BK):
        w = tl.load(w_rows + (k0 + kr), mask=w_ok & (k0 + kr < K), other=0.0)
        p0, p1 = _products(w, x_ptr, xs_ptr, sx, sxs, s_rows, k0, kr, grp0, K, A_MODE, BLOCK_K, ROWS)
        acc0 += p0
        if ROWS == 2:
            acc1 += p1
    if PDL:
        gdc_launch_dependents()
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + n, (tl.sum(acc0, axis=CA) + bias).to(y_ptr.dtype.element_ty), mask=n_ok)  # [BN]
    if ROWS == 2:
        tl.store(y_ptr + sy + n, (tl.sum(acc1, axis=CA) + bias).to(y_ptr.dtype.element_ty), mask=n_ok)


def supports(mode: int, block_k: int, config: tuple[int, int, int, int] | None) -> bool:
    """Whether `gemv` can run a call: a config, activation modes 0 and 1, scale groups of whole 8-column
    chunks."""
    if config is None:
        return False
    bk = config[1]
    return mode in (0, 1) and block_k % 8 == 0 and bk >= 8 and bk & (bk - 1) == 0


def gemv(
    x: torch.Tensor,
    x_scale: torch.Tensor | None,
    w_q: torch.Tensor,
    scale_inv: torch.Tensor,
    row_block: torch.Tensor | None,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    *,
    mode: int,
    block_k: int,
    config: tuple[int, int, int, int],
    plain_bn: int,
) -> torch.Tensor:
    """``out [M, N] = x [M, K] · dequant(w_q)ᵀ (+ bias)`` for a few rows (unit stride on K, any row
    stride); arguments checked by the caller (``supports`` says whether ``config`` = (BN, BK, warps,
    stages) fits the call)."""
    m, k = x.shape
    if not 1 <= m <= MAX_ROWS:
        raise ValueError(f"the FP8 GEMV takes 1 to {MAX_ROWS} rows, got x {tuple(x.shape)}")
    n = w_q.shape[0]
    bn, bk, warps, stages = config
    bk = max(min(bk, triton.next_power_of_2(k)), 8)
    pdl = use_pdl(x)
    xs = x if x_scale is None else x_scale
    # lanes along the chunks for 1-2 byte rows, along the weight rows for fp32 rows (module docstring)
    _fp8_gemv_kernel[(triton.cdiv(n, bn),)](
        x, xs, w_q, scale_inv, w_q if row_block is None else row_block, out if bias is None else bias, out,
        n, k, x.stride(0), xs.stride(0), out.stride(0), w_q.stride(0), scale_inv.stride(0),
        A_MODE=mode, HAS_BIAS=bias is not None, PLAIN=row_block is None, ROWS=m, BN=bn, BK=bk,
        BLOCK_K=block_k, PLAIN_BN_C=plain_bn, CA=chunk_axis(x.element_size() <= 2), PDL=pdl,
        num_warps=warps, num_stages=stages, **pdl_launch(pdl),
    )  # fmt: skip
    return out
