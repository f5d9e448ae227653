"""Where a large-M W8A8 block-FP8 call spends its time: per-kernel device µs (profiler) and host µs.

python3 scripts/fp8_large_profile.py OUT.json
"""

from __future__ import annotations

import json
import sys

import torch

from deltaserve.bench.common import device_record, host_us, kernel_medians_us, time_cuda
from deltaserve.ops.fp8 import kernels as K
from deltaserve.ops.fp8.reference import quantize_block_fp8


def _calls(x, w, q, s, xq, xs, out) -> dict:
    return {
        "bf16": lambda: x @ w.T,
        "w8a8": lambda: K.block_fp8_linear(x, q, s, None, quantize_activation=True),
        "w8a8_prequant": lambda: K.block_fp8_linear(xq, q, s, None, x_scale=xs),
        "quant_only": lambda: K.per_token_group_quant_fp8(x, 128),
        "gemm_tma_only": lambda: K._gemm_tma(xq, xs, q, s, None, out, 128),
    }


def main() -> None:
    rows: list = [dict(kind="device", **device_record())]
    for n, k in ((2048, 4096), (12288, 2048)):
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        q, s = quantize_block_fp8(w)
        for m in (2048, 4096):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            xq, xs = K.per_token_group_quant_fp8(x, 128)
            out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
            for name, fn in _calls(x, w, q, s, xq, xs, out).items():
                kern = kernel_medians_us(fn, calls=10)
                r = dict(
                    shape=f"M={m} N={n} K={k}",
                    call=name,
                    event_ms=time_cuda(fn),
                    host_us=host_us(fn),
                    kernels_us=kern,
                )
                rows.append(r)
                print(json.dumps(r), flush=True)
    json.dump(rows, open(sys.argv[1], "w"), indent=1)


if __name__ == "__main__":
    main()
