"""The one-row block-FP8 GEMV (ops/fp8/gemv.py, W8A16) at M=1: the shipped N tiers ("default") and each
config of a sweep, two rounds, CUDA graphs of 8 calls on 8 weight copies, bf16 cuBLAS beside every
shape, per-call µs (device machine). Weights, calls and timing rows are fp8_gemv_probe.py's.

    python scripts/fp8_gemv_sweep.py OUT.json
"""

from __future__ import annotations

import json
import sys

import torch
from fp8_gemv_probe import _calls, _measure, _weights

from deltaserve.bench.common import device_record, time_cuda_graph
from deltaserve.ops.fp8 import kernels, reference

SHAPES = [(12288, 2048), (9216, 2048), (24576, 2048), (4096, 2048), (1024, 2048), (2048, 4096), (2048, 6144)]
SWEEP = [None, (2, 2048, 4, 3), (4, 2048, 4, 3), (4, 2048, 8, 3), (2, 2048, 8, 3), (4, 1024, 8, 3),
         (2, 4096, 4, 3), (8, 2048, 8, 3)]  # fmt: skip


def main() -> None:
    rows: list = [device_record()]
    saved = kernels.CONFIG["gemv"]
    try:
        for n, k in SHAPES:
            ws = _weights(n, k)
            x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
            ref = reference.block_fp8_linear(x, ws[0][1], ws[0][2], None)
            calls = _calls("w8a16", x, None, None, ws)
            for rnd in range(2):
                bf16 = time_cuda_graph([(lambda w=w, x=x: x @ w.T) for w, _, _ in ws]) * 1e3
                for cfg in SWEEP:
                    kernels.CONFIG["gemv"] = saved if cfg is None else ((0, cfg),)
                    _measure(
                        rows,
                        dict(N=n, K=k, round=rnd, cfg=cfg or "default", bf16_us=bf16),
                        "gemv",
                        calls,
                        ref,
                    )
            torch.cuda.empty_cache()
    finally:
        kernels.CONFIG["gemv"] = saved
    json.dump(rows, open(sys.argv[1], "w"), indent=1)
    print("---- per shape and config: µs per round, bf16 µs, speed-up of the faster round ----")
    seen: dict = {}
    for r in rows[1:]:
        seen.setdefault((r["N"], r["K"], str(r["cfg"])), []).append(r)
    for (n, k, cfg), rs in seen.items():
        us = [r["us"] for r in rs if "us" in r]
        if not us:
            print(f"{n}x{k} {cfg:<18} {rs[0].get('error')}")
            continue
        bf = min(r["bf16_us"] for r in rs)
        print(
            f"{n}x{k} {cfg:<18} {' / '.join(f'{u:.2f}' for u in us)} us  bf16 {bf:.2f}  {bf / min(us):.2f}x"
        )


if __name__ == "__main__":
    main()
