"""Probe: the one-token MoE down GEMV (``DOWN_GEMV``) launch configs against the tiled down GEMM.

    python3 scripts/moe_down_gemv_probe.py OUT.json

Qwen3-Next layer shapes (E 512, top-10, H 2048, I 512, shared expert), T = 1, the decode call
``fused_moe(x, None, ..., router_weight=W)`` (router GEMM in the set-up launch), bf16 and block-FP8
experts; 8 calls with their own inputs per CUDA graph (different experts each call). The baseline
is the same call with the GEMV off (``DOWN_GEMV_MAX_T = 0``: tiled down GEMM + in-kernel combine),
timed in the same process. Every config's output is checked against the baseline's first.
"""

from __future__ import annotations

import json
import sys

import torch

from deltaserve.bench.common import time_cuda_graph
from deltaserve.bench.op_moe import DT, E, H, K, make_weights
from deltaserve.ops.moe import fused_moe
from deltaserve.ops.moe import kernels as KN

# (BN, warps, stages), ids/weights in registers
CONFIGS = [
    ((8, 4, 3), False),
    ((8, 4, 3), True),
    ((4, 2, 3), True),
    ((8, 2, 3), True),
    ((8, 4, 4), True),
    ((16, 4, 3), True),
    ((4, 4, 3), True),
]


def main() -> None:
    out = sys.argv[1]
    rows = []
    saved = KN.DOWN_GEMV_MAX_T, KN.DOWN_GEMV, KN.DOWN_GEMV_IDS_IN_REGS
    for fp8 in (False, True):
        ex, sh = make_weights(fp8)
        rw = (torch.randn(E, H, device="cuda") / H**0.5).to(DT)
        xs = [torch.randn(1, H, device="cuda", dtype=DT) for _ in range(8)]
        fns = [
            (lambda x=x, ex=ex, sh=sh, rw=rw: fused_moe(x, None, K, True, ex, sh, router_weight=rw))
            for x in xs
        ]
        KN.DOWN_GEMV_MAX_T = 0
        ref = fns[0]()
        base = time_cuda_graph(fns) * 1e3
        rows.append(dict(fp8=fp8, config="tiled down (baseline)", us=base))
        print(json.dumps(rows[-1]), flush=True)
        KN.DOWN_GEMV_MAX_T = 1
        for cfg, regs in CONFIGS:
            KN.DOWN_GEMV, KN.DOWN_GEMV_IDS_IN_REGS = cfg, regs
            try:
                got = fns[0]()
                err = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
                us = time_cuda_graph(fns) * 1e3
                rows.append(
                    dict(
                        fp8=fp8,
                        config=f"{cfg} regs={regs}",
                        us=us,
                        base_us=base,
                        gain_us=base - us,
                        rel_err=err,
                    )
                )
            except Exception as exc:  # a config that does not compile is a row, not a crash
                rows.append(dict(fp8=fp8, config=f"{cfg} regs={regs}", error=str(exc)[:300]))
            print(json.dumps(rows[-1]), flush=True)
        ex = sh = fns = ref = got = None  # free the weights before the next dtype
        torch.cuda.empty_cache()
    KN.DOWN_GEMV_MAX_T, KN.DOWN_GEMV, KN.DOWN_GEMV_IDS_IN_REGS = saved
    with open(out, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(0), torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
