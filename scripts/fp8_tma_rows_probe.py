"""Probe: the small-M W8A16 row form (``kernels._rows_step``) with the weight tile loaded by TMA and no
split-K, at wide N, against the shipped small-M kernel and bf16 cuBLAS (CUDA graphs of 8 calls on 8
weight copies, same process). Why: the TMA tile kernel streams a pre-quantised W8A8 12288x2048 at M=16
without split-K in 10.4 us (the small-M kernel 10.8), where the row form over cp.async without split-K
took 13.8 (BENCHMARKS.md 2026-11-29 ~12:10).

    FP8_SHAPES=12288x2048 python scripts/fp8_tma_rows_probe.py OUT.json [MS]
"""

from __future__ import annotations

import json
import sys

import torch
import triton
import triton.language as tl
from fp8_gemv_probe import SHAPES, _measure, _weights, reference
from triton.tools.tensor_descriptor import TensorDescriptor

from deltaserve.bench.common import device_record, time_cuda_graph
from deltaserve.ops.fp8 import kernels
from deltaserve.ops.pdl import gdc_launch_dependents, gdc_wait, pdl_launch

CONFIGS = [(bn, w, st) for bn in (128, 64) for w in (4, 8) for st in (3, 4, 6)]  # (BN, warps, stages)


@triton.jit
def _tma_rows_kernel(
    a_ptr, w_desc, bs_ptr, c_ptr, M, N, K, sa_m, sbs_r, sc_m,
    BN: tl.constexpr, BKC: tl.constexpr, BMT: tl.constexpr, BLOCK_K: tl.constexpr, PLAIN_BN_C: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    pid_n = tl.program_id(0)
    offs_n = pid_n * BN + tl.arange(0, BN)  # [BN]
    n_ok = offs_n < N
    offs_m = tl.arange(0, BMT)
    m_ok = offs_m < M
    offs_m64 = offs_m.to(tl.int64)
    kr = tl.arange(0, BKC)
    s_row = bs_ptr + ((pid_n * BN) // PLAIN_BN_C) * sbs_r
    acc = tl.zeros((BMT, BN), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BKC)):
        k = kb * BKC + kr
        w = w_desc.load([pid_n * BN, kb * BKC])  # [BN, BK] e4m3
        a = tl.load(
            a_ptr + offs_m64[:, None] * sa_m + k[None, :], mask=m_ok[:, None] & (k < K)[None, :], other=0.0
        )
        w_s = tl.load(s_row + (kb * BKC) // BLOCK_K)
        acc = kernels._rows_step(acc, w, a, w_s, a_ptr, 0, m_ok, 0, 448.0, False)
    mask = m_ok[:, None] & n_ok[None, :]
    kernels._store_out(acc, c_ptr, c_ptr, offs_m64, offs_n, n_ok, mask, sc_m, False)


def tma_rows(x, q, s, out, bn, warps, stages):
    m, k = x.shape
    n = q.shape[0]
    desc = TensorDescriptor.from_tensor(q, [bn, kernels.BK])
    _tma_rows_kernel[(triton.cdiv(n, bn),)](
        x, desc, s, out, m, n, k, x.stride(0), s.stride(0), out.stride(0),
        BN=bn, BKC=kernels.BK, BMT=16, BLOCK_K=128, PLAIN_BN_C=128, PDL=True,
        num_warps=warps, num_stages=stages, **pdl_launch(True),
    )  # fmt: skip
    return out


def main() -> None:
    ms = tuple(int(v) for v in sys.argv[2].split(",")) if len(sys.argv) > 2 else (16, 8, 3, 2)
    rows: list[dict] = []
    with kernels.config_restored():
        kernels.CONFIG["gemv_m_max"] = 0  # M=2 into the small-M kernel, as the tiers run it at wide N
        for n, k in SHAPES:
            ws = _weights(n, k)
            for m in ms:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                bf16 = time_cuda_graph([(lambda w=w, x=x: x @ w.T) for w, _, _ in ws]) * 1e3
                ref = reference.block_fp8_linear(x, ws[0][1], ws[0][2], None)
                base = dict(N=n, K=k, M=m, bf16_us=bf16, mode="w8a16")
                shipped = [(lambda q=q, s=s, x=x: kernels.block_fp8_linear(x, q, s, None)) for _, q, s in ws]
                for rnd in range(2):
                    _measure(rows, dict(base, cfg=None, round=rnd), "shipped", shipped, ref)
                    for cfg in CONFIGS if rnd == 0 else CONFIGS[:4]:
                        out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
                        fns = [
                            (lambda q=q, s=s, x=x, out=out, cfg=cfg: tma_rows(x, q, s, out, *cfg))
                            for _, q, s in ws
                        ]
                        _measure(rows, dict(base, cfg=cfg, round=rnd), "tma-rows", fns, ref)
    json.dump(dict(device=device_record(), rows=rows), open(sys.argv[1], "w"), indent=1)
    best: dict = {}
    for r in rows:
        if "us" in r and r["err"] < 2e-2:
            key = (r["N"], r["K"], r["M"], r["kernel"])
            if key not in best or r["us"] < best[key]["us"]:
                best[key] = r
    for key, r in sorted(best.items()):
        print(
            *key,
            r["cfg"],
            f"{r['us']:.2f} us, bf16 {r['bf16_us']:.2f}, {r['ratio']:.2f}x, err {r['err']:.1e}",
        )


if __name__ == "__main__":
    main()
