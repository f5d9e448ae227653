"""Per-kernel device time of one op call, and the host time of the call (device machine).

python scripts/kernel_breakdown.py OUT.json [moe|fp8|gdn_prefill|gdn_decode [kv|vk]]

For each case: the CUDA kernels one call launches with their median device time (torch.profiler
over 10 eager calls), the call's CUDA-graph time (where it can be captured) and the host time of
one call started on an idle GPU (Python and launch cost). Tells launch-bound
ops (sum of kernels << graph time) from kernel-bound ones.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch

from deltaserve.bench.common import (
    device_record,
    host_us,
    kernel_medians_us,
    measure_copy_bw,
    time_cuda_graph,
)


def _kernels(fn: Callable[[], Any], calls: int = 10) -> dict[str, float]:
    return {k[:60]: round(v, 2) for k, v in kernel_medians_us(fn, calls).items()}


def _case(name: str, fn: Callable[[], Any], graph: bool, res: dict) -> None:
    try:
        row: dict[str, Any] = {"case": name, "kernels_us": _kernels(fn), "host_us": round(host_us(fn), 1)}
        row["kernel_sum_us"] = round(sum(row["kernels_us"].values()), 2)
        if graph:
            row["graph_us"] = round(time_cuda_graph([fn]) * 1e3, 2)
        print(json.dumps(row), flush=True)
        res["rows"].append(row)
    except Exception:  # a failing case is reported, the others still run
        res["rows"].append({"case": name, "error": traceback.format_exc()[-600:]})
        traceback.print_exc()


def moe(res: dict) -> None:
    from deltaserve.bench import op_moe
    from deltaserve.ops.moe import fused_moe

    for fp8 in (False, True):
        ex, sh = op_moe.make_weights(fp8)
        for t in (1, 16):
            x = torch.randn(t, op_moe.H, device="cuda", dtype=op_moe.DT)
            lg = torch.randn(t, op_moe.E, device="cuda", dtype=op_moe.DT)
            _case(
                f"moe {'fp8' if fp8 else 'bf16'} T={t}",
                lambda x=x, lg=lg, ex=ex, sh=sh: fused_moe(x, lg, op_moe.K, True, ex, sh),
                True,
                res,
            )
        torch.cuda.empty_cache()


def fp8(res: dict) -> None:
    from deltaserve.ops.fp8 import block_fp8_linear
    from deltaserve.ops.fp8.reference import quantize_block_fp8

    for n, k in ((12288, 2048), (2048, 4096)):
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        q, s = quantize_block_fp8(w)
        rb = torch.arange(n, device="cuda") // 128
        for m in (1, 16):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            _case(f"bf16 matmul M={m} {n}x{k}", lambda x=x, w=w: x @ w.T, True, res)
            for qa in (False, True):
                _case(
                    f"fp8 {'w8a8' if qa else 'w8a16'} M={m} {n}x{k}",
                    lambda x=x, q=q, s=s, rb=rb, qa=qa: block_fp8_linear(x, q, s, rb, quantize_activation=qa),
                    True,
                    res,
                )


def gdn_prefill(res: dict) -> None:
    from deltaserve.bench import op_gdn
    from deltaserve.ops.gdn.prefill import gdn_prefill as prefill

    for hk, hv, t in ((16, 32, 32768), (16, 32, 4096)):
        x = op_gdn.make_inputs(t, hk, hv)
        cu = torch.tensor([0, t], device="cuda", dtype=torch.int32)
        pool = torch.zeros(2, hv, 128, 128, device="cuda")
        sl = torch.tensor([1], device="cuda", dtype=torch.int32)
        hi = torch.tensor([False], device="cuda")

        def call(x=x, cu=cu, pool=pool, sl=sl, hi=hi):
            return prefill(
                x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], cu_seqlens=cu, state=pool,
                state_slots=sl, has_initial_state=hi,
            )  # fmt: skip

        _case(f"gdn_prefill {hk}/{hv} 1x{t}", call, False, res)


def gdn_decode(res: dict) -> None:
    from deltaserve.bench import op_gdn
    from deltaserve.ops.gdn.decode import gdn_decode as decode

    hk, hv, d = 16, 32, 128
    for nb in (64, 256):
        x = op_gdn.make_inputs(nb, hk, hv)
        sl = torch.arange(nb, device="cuda", dtype=torch.int32)
        for sdt in (torch.bfloat16, torch.float32):
            for layout in sys.argv[3:4] or ("kv", "vk"):
                pool = torch.zeros(nb, hv, d, d, device="cuda", dtype=sdt)
                for cfg in (None, (128, 4), (32, 2), (16, 1), (32, 1), (64, 1), (16, 2), (64, 2)):

                    def call(x=x, pool=pool, cfg=cfg, layout=layout, sl=sl):
                        return decode(
                            x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], state=pool,
                            state_slots=sl, state_layout=layout, _config=cfg,
                        )  # fmt: skip

                    name = f"gdn_decode B={nb} {str(sdt)[6:]} {layout} cfg={cfg}"
                    try:
                        us = time_cuda_graph([call]) * 1e3
                        gb = 2 * pool.numel() * pool.element_size() / 1e9
                        row = {"case": name, "graph_us": round(us, 2), "state_TBps": round(gb / us * 1e3, 3)}
                    except Exception:
                        row = {"case": name, "error": traceback.format_exc()[-400:]}
                    print(json.dumps(row), flush=True)
                    res["rows"].append(row)


CASES = {"moe": moe, "fp8": fp8, "gdn_prefill": gdn_prefill, "gdn_decode": gdn_decode}


def main() -> None:
    res: dict = {"device": device_record(), "copy_TBps": round(measure_copy_bw() / 1e12, 3), "rows": []}
    print(res["device"], res["copy_TBps"], flush=True)
    for name in sys.argv[2:3] or list(CASES):
        CASES[name](res)
    with open(sys.argv[1], "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
