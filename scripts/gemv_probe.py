"""Probe: the one-row Triton GEMV (``ops.gemv``) launch configs against cuBLAS (``F.linear``).

    python3 scripts/gemv_probe.py OUT.json
    python3 scripts/gemv_probe.py OUT.json | python3 scripts/gemv_probe.py --table   # readable lines

Qwen3-Next projection shapes at one token (and the LM head), bf16. Each timing is a CUDA graph of 8
calls on 8 different weights (more bytes than L2 holds, as in a decode step), µs per call, median
of the replays; cuBLAS is timed the same way in the same process. Floor = weight bytes / 3.0 TB/s.
Every config's output is checked against ``F.linear`` first.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from deltaserve.bench.common import time_cuda_graph
from deltaserve.ops.gemv import kernels as K

SHAPES = {
    "gdn in_proj qkvz+ba": (12352, 2048),
    "gdn out_proj / attn o_proj": (2048, 4096),
    "attn qkv (gated q)": (9216, 2048),
    "dense mlp down (Qwen3.5-like)": (2048, 6144),
    "lm_head": (151936, 2048),
}
CONFIGS = [  # (BN, BK, warps, stages)
    (4, 512, 4, 3),
    (2, 1024, 4, 3),
    (8, 256, 4, 3),
    (8, 512, 4, 3),
    (4, 256, 4, 4),
    (16, 256, 8, 3),
    (4, 1024, 4, 2),
    (8, 512, 8, 3),
]


def table() -> None:
    """Read the probe's JSON lines on stdin, print one readable line each (other lines as they are)."""
    for line in sys.stdin:
        try:
            r = json.loads(line)
        except ValueError:
            print(line.rstrip())
            continue
        if "error" in r:
            print(f"{r['shape']:30s} {r['config']:20s} ERROR {r['error'][:120]}")
        elif "speedup" in r:
            print(f"{r['shape']:30s} {r['config']:20s} {r['us']:8.2f} us  x{r['speedup']:.2f} vs cuBLAS  "
                  f"{r['pct_floor']:.0f}% of floor")  # fmt: skip
        else:
            print(f"{r['shape']:30s} {r['config']:20s} {r['us']:8.2f} us  (floor {r['floor_us']:.2f} us)")


def main() -> None:
    if sys.argv[1] == "--table":
        table()
        return
    out = sys.argv[1]
    rows = []
    saved = list(K.CONFIGS)
    for name, (n, k) in SHAPES.items():
        copies = 2 if n * k > (64 << 20) else 8
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5 for _ in range(copies)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        floor_us = n * k * 2 / 3.0e12 * 1e6
        cublas = time_cuda_graph([(lambda w=w, x=x: F.linear(x, w)) for w in ws]) * 1e3
        ref = F.linear(x, ws[0])
        rows.append(dict(shape=name, n=n, k=k, config="cuBLAS", us=cublas, floor_us=floor_us))
        print(json.dumps(rows[-1]), flush=True)
        for cfg in CONFIGS:
            K.CONFIGS[:] = [(1 << 62, *cfg)]
            try:
                err = ((K.linear(x, ws[0]).float() - ref.float()).norm() / ref.float().norm()).item()
                us = time_cuda_graph([(lambda w=w, x=x: K.linear(x, w)) for w in ws]) * 1e3
                rows.append(
                    dict(shape=name, n=n, k=k, config=str(cfg), us=us, cublas_us=cublas, speedup=cublas / us,
                         floor_us=floor_us, pct_floor=100 * floor_us / us, rel_err=err)
                )  # fmt: skip
            except Exception as exc:  # a config that does not compile is a row, not a crash
                rows.append(dict(shape=name, config=str(cfg), error=str(exc)[:300]))
            print(json.dumps(rows[-1]), flush=True)
        del ws
        torch.cuda.empty_cache()
    K.CONFIGS[:] = saved
    with open(out, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(0), torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
