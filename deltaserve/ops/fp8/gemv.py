"""Triton block-FP8 GEMV for one row: ``y [1, N] = x [1, K] Wᵀ (+ b)``, any row map.

At one token the block-FP8 GEMM is a weight read, and the MMA kernel's fixed costs (split-K partials,
the arrival counter, a shared-memory round trip per K step) are most of its time. This kernel
streams instead: a program owns ``BN`` weight rows and walks K in ``BK``-wide steps, widening each
e4m3 tile in registers and adding its scaled 8-column chunk sums into an fp32 accumulator; one row sum
at the end, no split, no second pass. It is bound by the weight bytes in flight per SM, which the
registers per program set (every config of the first version held 32 KB per SM).
Each step gathers its ``[BN, BK/8]`` weight scales (row ``row_block[n]``, or ``n // 128`` for the
plain map; one per 8-column chunk, from L1).

Layout trap: tiles are ``[BN, BK/8, 8]`` and the activation row is loaded broadcast to that shape
(the rows hit L1). Weight and activations then share one register layout (8 elements per thread).
With ``[BN, BK]`` tiles Triton gives the e4m3 weight 16-wide and the bf16 activations 8-wide vectors
and converts one through shared memory every step; a per-column scale gather does the same.

Activations (constexpr ``A_MODE``, as in ``kernels.py``): 0 bf16/fp16 (W8A16), 1 e4m3 with
per-token-group scales (pre-quantised). W8A8 quantising the row is mode 0 on ``kernels.fake_quant_row``'s
output (a small kernel ahead, overlapped by PDL). Quantising the row inside this kernel cost more: 1.5x
the swap-AB kernel's time on an H100 (per element of the tile), 0.9-1.4 us over the two kernels on an
H200 (once per program, compact layout, 2026-11-29; BENCHMARKS.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltaserve.ops.pdl import gdc_launch_dependents, gdc_wait, pdl_launch, use_pdl


@triton.jit
def _products(w, x_ptr, xs_ptr, s_rows, k0, kr, K, A_MODE: tl.constexpr, BK: tl.constexpr,
              BLOCK_K: tl.constexpr):  # fmt: skip
    """The K step at ``k0``: ``w · x · scales`` summed per 8-column chunk, a ``[BN, BK/8]`` fp32 tile
    (``w`` its ``[BN, BK/8, 8]`` e4m3 weights, ``s_rows [BN, 1]`` the rows' scale-row pointers)."""
    k = k0 + kr  # [BN, BK/8, 8]
    xv = tl.load(x_ptr + k, mask=k < K, other=0.0).to(tl.float32)  # the same row in every tile row
    grp = ((k0 + tl.arange(0, BK // 8) * 8) // BLOCK_K)[None, :]  # [1, BK/8] group of each 8-column chunk
    g_ok = grp < tl.cdiv(K, BLOCK_K)
    scale = tl.load(s_rows + grp, mask=g_ok, other=0.0)  # [BN, BK/8]
    if A_MODE == 1:
        scale *= tl.load(xs_ptr + grp, mask=g_ok, other=0.0)
    # the scale multiplies each chunk's sum, not each product: 64 -> 44 registers at (2, 2048, 4) in the
    # sm_90 compile, so more programs and weight bytes in flight per SM (H200, M=1 12288x2048: 11.4 ->
    # 10.3 us; BENCHMARKS.md, 2026-11-29)
    return tl.sum(w.to(tl.float32) * xv, 2) * scale  # [BN, BK/8]


@triton.jit
def _fp8_gemv_kernel(
    x_ptr, xs_ptr, w_ptr, s_ptr, rb_ptr, bias_ptr, y_ptr, N, K, sw_n, ss_r,
    A_MODE: tl.constexpr, HAS_BIAS: tl.constexpr, PLAIN: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    BLOCK_K: tl.constexpr, PLAIN_BN_C: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    n = pid * BN + tl.arange(0, BN)  # [BN]
    n_ok = n < N
    if PLAIN:
        srow = n // PLAIN_BN_C
    else:
        srow = tl.load(rb_ptr + n, mask=n_ok, other=0)
    s_rows = s_ptr + srow.to(tl.int64)[:, None] * ss_r  # [BN, 1]
    kc = tl.arange(0, BK // 8)[:, None] * 8 + tl.arange(0, 8)[None, :]  # [BK/8, 8]
    kr = kc[None, :, :] + 0 * n[:, None, None]  # [BN, BK/8, 8]
    w_rows = w_ptr + n.to(tl.int64)[:, None, None] * sw_n  # [BN, 1, 1]
    w_ok = n_ok[:, None, None]
    # the first weight tile is read before waiting on the previous kernel (PDL: weights are constant)
    w = tl.load(w_rows + kr, mask=w_ok & (kr < K), other=0.0)  # [BN, BK/8, 8]
    if PDL:
        gdc_wait()
    acc = _products(w, x_ptr, xs_ptr, s_rows, 0, kr, K, A_MODE, BK, BLOCK_K)
    for k0 in range(BK, K, BK):
        w = tl.load(w_rows + (k0 + kr), mask=w_ok & (k0 + kr < K), other=0.0)
        acc += _products(w, x_ptr, xs_ptr, s_rows, k0, kr, K, A_MODE, BK, BLOCK_K)
    if PDL:
        gdc_launch_dependents()
    y = tl.sum(acc, axis=1)  # [BN]
    if HAS_BIAS:
        y += tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + n, y.to(y_ptr.dtype.element_ty), mask=n_ok)


def supports(mode: int, block_k: int, config: tuple[int, int, int, int]) -> bool:
    """Whether `gemv` can run a call: activation modes 0 and 1, scale groups of whole 8-column chunks."""
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
    """``out [1, N] = x [1, K] · dequant(w_q)ᵀ (+ bias)``; arguments checked by the caller (``supports``
    says whether ``config`` = (BN, BK, warps, stages) fits the call)."""
    k = x.shape[1]
    n = w_q.shape[0]
    bn, bk, warps, stages = config
    bk = max(min(bk, triton.next_power_of_2(k)), 8)
    pdl = use_pdl(x)
    _fp8_gemv_kernel[(triton.cdiv(n, bn),)](
        x, x if x_scale is None else x_scale, w_q, scale_inv, w_q if row_block is None else row_block,
        out if bias is None else bias, out, n, k, w_q.stride(0), scale_inv.stride(0),
        A_MODE=mode, HAS_BIAS=bias is not None, PLAIN=row_block is None, BN=bn, BK=bk, BLOCK_K=block_k,
        PLAIN_BN_C=plain_bn, PDL=pdl, num_warps=warps, num_stages=stages, **pdl_launch(pdl),
    )  # fmt: skip
    return out
