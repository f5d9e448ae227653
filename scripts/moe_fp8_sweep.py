"""Probe: the tiled expert GEMMs' launch configs with block-FP8 experts at decode batch sizes.

    python3 scripts/moe_fp8_sweep.py OUT.json

At T = 16 the whole Qwen3-Next ``fused_moe`` took as long with FP8 experts as with bf16 ones (H200,
2026-11-28: 0.252 against 0.249 ms) although it reads half the weight bytes: the decode configs were
tuned on bf16 weights, and an FP8 tile of the same shape carries half the bytes per pipeline stage.
For T = 16, 64, 256 and both weight kinds this times the gate/up tile configs (down kept at the shipped
one), then the down ones (up shipped), each checked against the shipped config's output; ``vs_bf16``
is against bf16 experts at the shipped configs, timed first in the same process. 8 calls with their
own inputs per CUDA graph, as ``bench.ops moe``. (A swap-AB variant of both GEMMs, with its own
"swap" mode here, was measured and removed: its last version is at commit 2e4a07a.)
"""

from __future__ import annotations

import json
import sys

import torch

from deltaserve.bench.common import bytes_floor_ms, device_record, time_cuda_graph
from deltaserve.bench.op_moe import DT, E, H, K, make_weights
from deltaserve.bench.op_moe import I as I_MOE
from deltaserve.ops.moe import fused_moe
from deltaserve.ops.moe import kernels as KN

UPS = [(32, 128, 4, 4), (32, 128, 4, 6), (64, 128, 4, 4), (64, 64, 4, 6), (32, 64, 4, 8), (16, 128, 4, 6),
       (64, 128, 4, 6), (32, 128, 2, 6)]  # fmt: skip
OLD = ((32, 64, 4, 6), (64, 64, 4, 6))  # the decode configs before this sweep
DOWNS = [(64, 128, 4, 4), (64, 128, 4, 6), (128, 128, 4, 4), (32, 128, 4, 6), (128, 64, 4, 6), (64, 64, 4, 8)]


def _inputs(t: int, n: int = 8):
    torch.manual_seed(t)
    return [
        (torch.randn(t, H, device="cuda", dtype=DT), torch.randn(t, E, device="cuda", dtype=DT))
        for _ in range(n)
    ]


def _time(ws, ins) -> float:
    ex, sh = ws
    return time_cuda_graph([(lambda x=x, lg=lg: fused_moe(x, lg, K, True, ex, sh)) for x, lg in ins]) * 1e3


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def configs(first) -> list:
    """(up, down) pairs: the shipped decode configs, the earlier ones, then each kernel's candidates with
    the other kernel at the shipped config."""
    return [(first[2], first[3]), OLD] + [(u, first[3]) for u in UPS] + [(first[2], d) for d in DOWNS]


def main() -> None:
    rows: list = [dict(kind="device", **device_record())]
    saved = list(KN.CONFIGS)
    first = saved[0]  # (max_avg, BM, up, down): the decode bucket
    try:
        ws = make_weights(False)
        base = {t: _time(ws, _inputs(t)) for t in (16, 64, 256)}  # bf16 experts, shipped configs
        for kind in ("bf16", "fp8"):
            if kind == "fp8":
                del ws
                torch.cuda.empty_cache()
                ws = make_weights(True)
            for t in (16, 64, 256):
                ins = _inputs(t)
                touched = torch.unique(torch.topk(ins[0][1].float(), K, -1).indices).numel()
                per_expert = 3 * H * I_MOE * (1 if kind == "fp8" else 2)
                floor_us = bytes_floor_ms((touched + 1) * per_expert) * 1e3
                ref = fused_moe(ins[0][0], ins[0][1], K, True, *ws)
                for up, down in configs(first):
                    KN.CONFIGS[:] = [(first[0], first[1], up, down)] + saved[1:]
                    r = dict(
                        kind=kind,
                        t=t,
                        up=up,
                        down=down,
                        bf16_us=round(base[t], 2),
                        floor_us=round(floor_us, 1),
                    )
                    try:
                        r["rel_err"] = _rel(fused_moe(ins[0][0], ins[0][1], K, True, *ws), ref)
                        r["us"] = round(_time(ws, ins), 2)
                        r["vs_bf16"] = round(base[t] / r["us"], 3)
                    except Exception as exc:  # noqa: BLE001 - a config that does not compile is a row
                        r["error"] = str(exc)[:200]
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    finally:
        KN.CONFIGS[:] = saved
        with open(sys.argv[1], "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
