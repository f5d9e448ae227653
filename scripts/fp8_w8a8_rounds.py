"""One-row W8A8 and W8A16 block-FP8 GEMM against bf16 cuBLAS, five interleaved rounds of 8-call CUDA graphs
(device machine): per-call µs medians and the speed-up of each round.

    python scripts/fp8_w8a8_rounds.py
"""

from __future__ import annotations

import torch
from fp8_gemv_probe import _weights

from deltaserve.bench.common import time_cuda_graph
from deltaserve.ops.fp8 import kernels


def main() -> None:
    print(torch.cuda.get_device_name(0))
    for n, k in ((12288, 2048), (2048, 4096), (2048, 6144)):
        ws = _weights(n, k)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        calls = {
            "bf16": [(lambda w=w, x=x: x @ w.T) for w, _, _ in ws],
            "w8a8": [
                (lambda q=q, s=s, x=x: kernels.block_fp8_linear(x, q, s, None, quantize_activation=True))
                for _, q, s in ws
            ],
            "w8a16": [(lambda q=q, s=s, x=x: kernels.block_fp8_linear(x, q, s, None)) for _, q, s in ws],
        }
        us: dict[str, list[float]] = {c: [] for c in calls}
        for _ in range(5):
            for name, fns in calls.items():
                us[name].append(time_cuda_graph(fns) * 1e3)
        med = {c: sorted(v)[2] for c, v in us.items()}
        for name in ("w8a8", "w8a16"):
            per_round = [round(b / o, 3) for b, o in zip(us["bf16"], us[name], strict=True)]
            print(
                f"{n}x{k} {name}: {med[name]:.2f} us, bf16 {med['bf16']:.2f} us, {med['bf16'] / med[name]:.2f}x "
                f"(rounds {per_round})",
                flush=True,
            )


if __name__ == "__main__":
    main()
