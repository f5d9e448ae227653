"""ncu target: the small-M block-FP8 GEMM cases and the bf16 cuBLAS baseline, one case per process.

    ncu --profile-from-start off ... python3 scripts/fp8_small_ncu.py CASE

CASE is ``{bf16|w8a8|w8a16}:M:N:K``. Inputs are made and every kernel compiled and warmed before
``cudaProfilerStart``; then the case runs twice inside the profiled range (ncu's own replay flushes
the caches, so each profiled launch reads its weight from DRAM, like the benchmark's 8-copy graphs).
"""

from __future__ import annotations

import sys

import torch

from deltaserve.bench.common import ncu_range
from deltaserve.ops.fp8 import block_fp8_linear
from deltaserve.ops.fp8.reference import quantize_block_fp8


def main() -> None:
    kind, m, n, k = sys.argv[1].split(":")
    m, n, k = int(m), int(n), int(k)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    q, s = quantize_block_fp8(w)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    if kind == "bf16":
        fn = lambda: x @ w.T  # noqa: E731
    else:
        fn = lambda: block_fp8_linear(x, q, s, None, quantize_activation=kind == "w8a8")  # noqa: E731
    ncu_range(fn, calls=2)


if __name__ == "__main__":
    main()
