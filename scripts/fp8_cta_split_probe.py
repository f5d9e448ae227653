"""Probe: small-M W8A16 block-FP8 with split-K inside one program (no global fix-up), against the shipped
kernel and bf16 cuBLAS, same process, CUDA graphs of 8 calls on 8 weight copies (µs per call).

    python scripts/fp8_cta_split_probe.py OUT.json [MS]      (MS: e.g. 16,4,3; FP8_SHAPES narrows shapes)

Why: the shipped small-M kernel splits K over programs and the last program of a tile to arrive adds the
fp32 partials (fence, arrival atomic, partial reads): 1.3-1.9 us of its 6.7-12.5 us (BENCHMARKS.md,
2026-11-29 ~10:20), and every way around it measured so far lost. Here one program owns a [16, BN] output
tile over all of K, and its K range is cut into S slices handled side by side as one batched
[S, 16, BK] x [S, BK, BN] mma.sync product per step (Triton puts the warps along the batch axis); the S
partial tiles meet once in shared memory at the end (``tl.sum`` over the slice axis). So narrow tiles
keep enough programs, each program keeps S weight slices in flight, and nothing crosses programs.

Plain row map, W8A16 only (the layers' path): the e4m3 tile widened to fp16 and the bf16 rows scaled per
slice, row and K step by a power of two into fp16's range (``kernels._pow2_fp16_rows``' rule), exact.
Configs: (BN, S, num_warps, num_stages).
"""

# ruff: noqa: B023 - the timing closures run inside the loop iteration that builds them
from __future__ import annotations

import json
import sys

import torch
import triton
import triton.language as tl
from fp8_gemv_probe import SHAPES, _measure, _weights

from deltaserve.bench.common import device_record, time_cuda_graph
from deltaserve.ops import pdl
from deltaserve.ops.fp8 import kernels, reference
from deltaserve.ops.pdl import gdc_launch_dependents, gdc_wait

CONFIGS = [
    (16, 4, 4, 3), (16, 4, 4, 4), (16, 8, 8, 3), (32, 4, 4, 3), (32, 2, 2, 4), (16, 2, 2, 4), (64, 4, 4, 3),
    (32, 8, 8, 3),
]  # fmt: skip


@triton.jit
def _cta_split_kernel(
    a_ptr, b_ptr, bs_ptr, c_ptr, M, N, K, sa_m, sb_n, sbs_r, sc_m, KS,
    BMT: tl.constexpr, BN: tl.constexpr, BKC: tl.constexpr, S: tl.constexpr, BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    if PDL:
        gdc_wait()
    pid_n = tl.program_id(0)
    offs_s = tl.arange(0, S)[:, None, None]  # [S, 1, 1]
    offs_m = tl.arange(0, BMT)[None, :, None]  # [1, BMT, 1]
    offs_n = pid_n * BN + tl.arange(0, BN)[None, :, None]  # [1, BN, 1]
    kr = tl.arange(0, BKC)[None, None, :]  # [1, 1, BKC]
    m_ok = offs_m < M
    n_ok = offs_n < N
    a_rows = a_ptr + offs_m.to(tl.int64) * sa_m  # [1, BMT, 1]
    w_rows = b_ptr + offs_n.to(tl.int64) * sb_n  # [1, BN, 1]
    s_row = bs_ptr + ((pid_n * BN) // BLOCK_K) * sbs_r  # the plain map's one scale row (BN divides 128)
    acc = tl.zeros((S, BMT, BN), dtype=tl.float32)
    for kb in range(0, tl.cdiv(KS, BKC)):
        k0 = offs_s * KS + kb * BKC  # [S, 1, 1] each slice's step start
        k = k0 + kr  # [S, 1, BKC]
        k_ok = (kb * BKC + kr < KS) & (k < K)
        w = tl.load(w_rows + k, mask=n_ok & k_ok, other=0.0)  # [S, BN, BKC] e4m3
        a = tl.load(a_rows + k, mask=m_ok & k_ok, other=0.0)  # [S, BMT, BKC] bf16
        w_s = tl.load(s_row + tl.minimum(k0, K - 1) // BLOCK_K)  # [S, 1, 1]
        af = a.to(tl.float32)
        amax = tl.max(tl.abs(af), axis=2, keep_dims=True)  # [S, BMT, 1]
        ex = tl.maximum((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF, 15)
        sc = ((268 - ex) << 23).to(tl.float32, bitcast=True)  # 2^(14 - (ex - 127))
        inv = ((ex - 14) << 23).to(tl.float32, bitcast=True)
        a16 = (af * sc).to(tl.float16)  # [S, BMT, BKC]
        part = tl.dot(a16, tl.permute(w, (0, 2, 1)).to(tl.float16))  # [S, BMT, BN]
        acc += part * (inv * w_s)
    if PDL:
        gdc_launch_dependents()
    out = tl.sum(acc, axis=0)  # [BMT, BN]
    om = tl.arange(0, BMT)[:, None]
    on = pid_n * BN + tl.arange(0, BN)[None, :]
    tl.store(c_ptr + om.to(tl.int64) * sc_m + on, out.to(c_ptr.dtype.element_ty), mask=(om < M) & (on < N))


def cta_split_linear(x: torch.Tensor, w_q: torch.Tensor, scale_inv: torch.Tensor, cfg: tuple) -> torch.Tensor:
    """x [M <= 16, K] bf16 @ dequant(w_q [N, K], scale_inv [N/128, K/128])^T, plain map."""
    bn, s, warps, stages = cfg
    m, k = x.shape
    n = w_q.shape[0]
    ks = triton.cdiv(triton.cdiv(k, s), 128) * 128  # each slice a whole number of 128-column steps
    out = torch.empty(m, n, device=x.device, dtype=torch.bfloat16)
    use = pdl.use_pdl(x)
    _cta_split_kernel[(triton.cdiv(n, bn),)](
        x, w_q, scale_inv, out, m, n, k, x.stride(0), w_q.stride(0), scale_inv.stride(0), out.stride(0), ks,
        BMT=16, BN=bn, BKC=128, S=s, BLOCK_K=128, PDL=use, num_warps=warps, num_stages=stages,
        **pdl.pdl_launch(use),
    )  # fmt: skip
    return out


def main() -> None:
    ms = tuple(int(v) for v in sys.argv[2].split(",")) if len(sys.argv) > 2 else (16, 4, 3)
    rows: list[dict] = []
    for n, k in SHAPES:
        ws = _weights(n, k)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            bf16 = time_cuda_graph([(lambda w=w: x @ w.T) for w, _, _ in ws]) * 1e3
            ref = reference.block_fp8_linear(x, ws[0][1], ws[0][2], None)
            base = dict(N=n, K=k, M=m, bf16_us=bf16, mode="w8a16")
            shipped = [(lambda q=q, s=s: kernels.block_fp8_linear(x, q, s, None)) for _, q, s in ws]
            for rnd in range(2):
                _measure(rows, dict(base, cfg=None, round=rnd), "shipped", shipped, ref)
                for cfg in CONFIGS:
                    fns = [(lambda q=q, s=s, c=cfg: cta_split_linear(x, q, s, c)) for _, q, s in ws]
                    _measure(rows, dict(base, cfg=cfg, round=rnd), "cta-split", fns, ref)
    with open(sys.argv[1], "w") as f:
        json.dump(dict(device=device_record(), rows=rows), f, indent=1, default=str)


if __name__ == "__main__":
    main()
