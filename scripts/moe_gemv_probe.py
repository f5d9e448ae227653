"""Probe: the one-token MoE GEMVs' launch configs (``UP_GEMV``, ``DOWN_GEMV``) against the tiled kernels.

    python3 scripts/moe_gemv_probe.py OUT.json

Qwen3-Next layer shapes (E 512, top-10, H 2048, I 512, shared expert), T = 1, the decode call
``fused_moe(x, None, ..., router_weight=W)`` (router GEMM in the set-up launch), bf16 and block-FP8
experts; 8 calls with their own inputs per CUDA graph (different experts each call). Baselines, timed
in the same process: both GEMMs tiled (``DOWN_GEMV_MAX_T = 0``), and the tiled gate/up GEMM with the
down GEMV (``UP_GEMV`` off, the shipped path before the up GEMV). Every config's output is checked
against the all-tiled one.
"""

from __future__ import annotations

import json
import sys

import torch

from deltaserve.bench.common import bytes_floor_ms, time_cuda_graph
from deltaserve.bench.op_moe import DT, E, H, K, make_weights
from deltaserve.bench.op_moe import I as I_MOE
from deltaserve.ops.moe import fused_moe
from deltaserve.ops.moe import kernels as KN

# (up (BN, BK, warps, stages) or None, down (BN, warps, stages))
CONFIGS = [
    (None, (4, 4, 3)),
    ((4, 1024, 4, 2), (4, 4, 3)),
    ((4, 1024, 4, 3), (4, 4, 3)),
    ((4, 512, 4, 3), (4, 4, 3)),
    ((4, 512, 2, 3), (4, 4, 3)),
    ((4, 1024, 2, 2), (4, 4, 3)),
    ((8, 256, 4, 3), (4, 4, 3)),
    ((8, 512, 8, 3), (4, 4, 3)),
    ((16, 256, 4, 3), (4, 4, 3)),
    ((2, 1024, 2, 2), (4, 4, 3)),
    ((4, 256, 2, 4), (4, 4, 3)),
    ((4, 1024, 4, 2), (4, 2, 3)),
    ((4, 1024, 4, 2), (8, 8, 3)),
    ((8, 1024, 4, 2), (4, 4, 3)),
    ((8, 1024, 8, 2), (4, 4, 3)),
    ((4, 2048, 4, 2), (4, 4, 3)),
    ((4, 2048, 8, 2), (4, 4, 3)),
    ((8, 2048, 8, 2), (4, 4, 3)),
]


def main() -> None:
    out = sys.argv[1]
    rows = []
    saved = KN.DOWN_GEMV_MAX_T, KN.DOWN_GEMV, dict(KN.UP_GEMV)
    for fp8 in (False, True):
        kind = "fp8" if fp8 else "bf16"
        ex, sh = make_weights(fp8)
        rw = (torch.randn(E, H, device="cuda") / H**0.5).to(DT)
        xs = [torch.randn(1, H, device="cuda", dtype=DT) for _ in range(8)]
        fns = [
            (lambda x=x, ex=ex, sh=sh, rw=rw: fused_moe(x, None, K, True, ex, sh, router_weight=rw))
            for x in xs
        ]
        # 11 experts (10 routed + shared) x 3 matrices of H x I, plus the router
        wbytes = (K + 1) * 3 * H * I_MOE * (1 if fp8 else 2) + E * H * 2
        floor_us = bytes_floor_ms(wbytes) * 1e3
        KN.DOWN_GEMV_MAX_T = 0
        ref = fns[0]()
        base = time_cuda_graph(fns) * 1e3
        rows.append(dict(w=kind, config="all tiled (baseline)", us=base, floor_us=floor_us))
        print(json.dumps(rows[-1]), flush=True)
        KN.DOWN_GEMV_MAX_T = 1
        for up, down in CONFIGS:
            KN.UP_GEMV[kind], KN.DOWN_GEMV = up, down
            name = f"up {up} down {down}"
            try:
                got = fns[0]()
                err = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
                us = time_cuda_graph(fns) * 1e3
                rows.append(dict(w=kind, config=name, us=us, base_us=base, floor_us=floor_us, rel_err=err))
            except Exception as exc:  # a config that does not compile is a row, not a crash
                rows.append(dict(w=kind, config=name, error=str(exc)[:300]))
            print(json.dumps(rows[-1]), flush=True)
        ex = sh = fns = ref = got = None  # free the weights before the next dtype
        torch.cuda.empty_cache()
    KN.DOWN_GEMV_MAX_T, KN.DOWN_GEMV = saved[:2]
    KN.UP_GEMV.update(saved[2])
    with open(out, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(0), torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
