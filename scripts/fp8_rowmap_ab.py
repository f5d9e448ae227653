"""One-row block-FP8 GEMM with and without an explicit row map (int64 / int32 ``row_block``), W8A16 and
W8A8, three interleaved rounds of 8-call CUDA graphs (device machine; per-call µs, median and runs).

    python scripts/fp8_rowmap_ab.py
"""

from __future__ import annotations

import torch
from fp8_gemv_probe import _weights

from deltaserve.bench.common import time_cuda_graph
from deltaserve.ops.fp8 import kernels


def main() -> None:
    print(torch.cuda.get_device_name(0))
    for n, k in ((12288, 2048), (2048, 4096)):
        ws = _weights(n, k)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        rb64 = torch.arange(n, device="cuda") // 128
        maps = (("plain", None), ("rb64", rb64), ("rb32", rb64.int()))
        res: dict = {}
        for _ in range(3):
            for qa in (False, True):
                for name, rb in maps:
                    fns = [
                        (
                            lambda q=q, s=s, rb=rb, qa=qa, x=x: kernels.block_fp8_linear(
                                x, q, s, rb, quantize_activation=qa
                            )
                        )
                        for _, q, s in ws
                    ]
                    res.setdefault((qa, name), []).append(time_cuda_graph(fns) * 1e3)
        for (qa, name), v in res.items():
            med = sorted(v)[len(v) // 2]
            print(
                n, k, "w8a8" if qa else "w8a16", name, f"{med:.2f} us", [round(u, 2) for u in v], flush=True
            )


if __name__ == "__main__":
    main()
