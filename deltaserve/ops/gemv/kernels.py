"""Triton decode GEMV: ``y [1, N] = x [1, K] Wᵀ (+ b)`` for one token, bf16/fp16 weights.

At one token a dense projection is a pure weight read. cuBLAS picks split-K kernels plus a separate
reduce launch for the 2048-wide outputs of a Qwen3-Next layer and reaches ~55-85 % of the copy
bandwidth there; this kernel gives each program ``BN`` output rows and streams their ``[BN, K]``
weight slab in ``BK``-wide steps into a ``[BN, BK]`` fp32 register accumulator, one row sum at
the end (no split, no second launch). ``CONFIGS`` is picked per weight size from an H100 sweep
(``scripts/gemv_probe.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltaserve.ops.gemv.reference import check_linear
from deltaserve.ops.pdl import gdc_launch_dependents, gdc_wait, pdl_launch, use_pdl
from deltaserve.ops.triton_common import INTERPRET, TL_DTYPE

# (max N*K, BN, BK, warps, stages): the first whose bound holds. H100 sweep (scripts/gemv_probe.py,
# 2026-11-28, CUDA graph of 8 calls on distinct weights, µs; cuBLAS in the same process):
#   12352x2048 in_proj 19.1 (cuBLAS 21.1) | 2048x4096 out_proj 8.5 (11.5) | 9216x2048 qkv 14.9 (16.0)
#   2048x6144 11.3 (14.0) | 151936x2048 lm_head 202 (220; 3.0 TB/s floor 207)
# with (2, 1024, 4, 3); (4, 512, 4, 3) and (8, 512, 8, 3) were within ~1 us except on out_proj.
CONFIGS = [
    (1 << 62, 2, 1024, 4, 3),
]


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, N, K, sw,
    HAS_BIAS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, EVEN_K: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0) * BN + tl.arange(0, BN)  # [BN]
    n_ok = n < N
    kr = tl.arange(0, BK)
    rows = w_ptr + n.to(tl.int64)[:, None] * sw  # [BN, 1]
    # the first weight tile is read before waiting on the previous kernel (PDL: weights are constant)
    w0 = tl.load(rows + kr[None, :], mask=n_ok[:, None] & (kr[None, :] < K), other=0.0)  # [BN, BK]
    if PDL:
        gdc_wait()
    x0 = tl.load(x_ptr + kr, mask=kr < K, other=0.0)
    acc = w0.to(tl.float32) * x0.to(tl.float32)[None, :]  # [BN, BK]
    for k0 in range(BK, K, BK):
        k = k0 + kr  # [BK]
        if EVEN_K:
            xv = tl.load(x_ptr + k)
            wv = tl.load(rows + k[None, :], mask=n_ok[:, None] & (k[None, :] >= 0), other=0.0)
        else:
            xv = tl.load(x_ptr + k, mask=k < K, other=0.0)
            wv = tl.load(rows + k[None, :], mask=n_ok[:, None] & (k[None, :] < K), other=0.0)
        acc += wv.to(tl.float32) * xv.to(tl.float32)[None, :]  # [BN, BK]
    if PDL:
        gdc_launch_dependents()
    y = tl.sum(acc, axis=1)  # [BN]
    if HAS_BIAS:
        y += tl.load(b_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + n, y.to(y_ptr.dtype.element_ty), mask=n_ok)


def _pick(numel: int) -> tuple[int, int, int, int]:
    for bound, bn, bk, warps, stages in CONFIGS:
        if numel <= bound:
            return bn, bk, warps, stages
    return CONFIGS[-1][1:]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Triton version of ``reference.linear`` for one row: ``x [1, K]``, ``weight [N, K]`` (unit last
    stride), bf16 or fp16 -> ``[1, N]``."""
    check_linear(x, weight, bias)
    if x.shape[0] != 1 or x.dtype not in TL_DTYPE or not (x.is_cuda or INTERPRET):
        raise ValueError(f"gemv: x must be one bf16/fp16 CUDA row, got {tuple(x.shape)} {x.dtype} {x.device}")
    if weight.stride(1) != 1:
        raise ValueError(f"gemv: weight must have unit last stride, got strides {weight.stride()}")
    n, k = weight.shape
    x = x.contiguous()
    y = torch.empty(1, n, dtype=x.dtype, device=x.device)
    if n == 0:
        return y
    bn, bk, warps, stages = _pick(n * k)
    bk = min(bk, triton.next_power_of_2(max(k, 16)))
    pdl = use_pdl(x)
    _gemv_kernel[(triton.cdiv(n, bn),)](
        x, weight, bias if bias is not None else weight, y, n, k, weight.stride(0),
        HAS_BIAS=bias is not None, BN=bn, BK=bk, EVEN_K=k % bk == 0, PDL=pdl, num_warps=warps,
        num_stages=stages, **pdl_launch(pdl),
    )  # fmt: skip
    return y
