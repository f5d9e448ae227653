"""Probe: the tiled expert GEMMs' launch configs with block-FP8 experts at decode batch sizes.

    python3 scripts/moe_fp8_sweep.py OUT.json [prefill]

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


def _measure(rows: list, r: dict, ws, ins, ref: torch.Tensor) -> None:
    """Checks the first input's output against ``ref``, times the graph over ``ins`` and appends ``r``
    (or the error: a config that does not compile is a row, not a crash)."""
    try:
        r["rel_err"] = _rel(fused_moe(ins[0][0], ins[0][1], K, True, *ws), ref)
        r["us"] = round(_time(ws, ins), 2)
        r["vs_bf16"] = round(r["bf16_us"] / r["us"], 3)
    except Exception as exc:  # noqa: BLE001
        r["error"] = str(exc)[:200]
    rows.append(r)
    print(json.dumps(r), flush=True)


def configs(first) -> list:
    """(up, down) pairs: the shipped decode configs, the earlier ones, then each kernel's candidates with
    the other kernel at the shipped config."""
    return [(first[2], first[3]), OLD] + [(u, first[3]) for u in UPS] + [(first[2], d) for d in DOWNS]


# prefill: gate/up (config, swap-AB) candidates for the bucket a T falls in, then down configs (with the
# shipped gate/up); the shipped configs come first
PREFILL_UPS = [(64, 64, 4, 3), (64, 64, 4, 4), (128, 64, 8, 3), (64, 128, 4, 3), (128, 64, 8, 4), (64, 32, 4, 4)]  # fmt: skip
PREFILL_DOWNS = [(64, 64, 8, 3), (64, 64, 4, 4), (128, 32, 8, 3), (64, 128, 4, 3), (128, 64, 4, 4), (64, 32, 4, 4)]  # fmt: skip


def prefill(rows: list) -> None:
    """T = 1024 (BM 32 bucket) and 4096 (BM 128) with FP8 experts: the gate/up GEMM's configs, plain and
    swap-AB, then the down GEMM's (through ``CONFIGS["fp8"]``); bf16 experts at the shipped configs
    first, as the baseline. (The plain FP8 gate/up tile at BM 128 used 255 registers and spilled in the
    sm_90 compile, and so does the FP8 down tile (128, 64, 8, 3).)"""
    ts = (1024, 4096)
    with KN.configs_restored() as tables:
        shipped = list(tables["fp8"])
        ws = make_weights(False)
        ins = {t: _inputs(t, 2) for t in ts}
        base = {t: _time(ws, ins[t]) for t in ts}
        del ws
        torch.cuda.empty_cache()
        ws = make_weights(True)
        for t in ts:
            at = next(j for j, c in enumerate(shipped) if t * (K + 1) / (E + 1) <= c[0])  # as _pick
            max_avg, bm, up_s, down_s = shipped[at]
            ref = fused_moe(ins[t][0][0], ins[t][0][1], K, True, *ws)
            cands = [(up_s, down_s)] + [((*u, sw), down_s) for u in PREFILL_UPS for sw in (True, False)]
            cands += [(up_s, d) for d in PREFILL_DOWNS]
            for up, down in cands:
                tables["fp8"][at] = (max_avg, bm, up, down)
                r = dict(kind="fp8", t=t, bm=bm, up=up, down=down, bf16_us=round(base[t], 2))
                _measure(rows, r, ws, ins[t], ref)


def main() -> None:
    rows: list = [dict(kind="device", **device_record())]
    if sys.argv[2:3] == ["prefill"]:
        try:
            prefill(rows)
        finally:
            with open(sys.argv[1], "w") as f:
                json.dump(rows, f, indent=1)
        return
    try:
        with KN.configs_restored() as tables:
            _decode_sweep(rows, tables)
    finally:
        with open(sys.argv[1], "w") as f:
            json.dump(rows, f, indent=1)


def _decode_sweep(rows: list, tables: dict) -> None:
    """T = 16 / 64 / 256 (the decode bucket), bf16 and FP8 experts: each candidate of ``configs`` written
    into ``tables`` (``CONFIGS``, restored by the caller), against bf16 experts at the shipped configs."""
    shipped = {kind: tables[kind][0] for kind in ("bf16", "fp8")}  # (max_avg, BM, up, down): decode bucket
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
            first = shipped[kind]
            for up, down in configs(first):
                tables[kind][0] = (first[0], first[1], (*up[:4], False), down)
                r = dict(kind=kind, t=t, up=up, down=down, bf16_us=round(base[t], 2))
                r["floor_us"] = round(floor_us, 1)
                _measure(rows, r, ws, ins, ref)


if __name__ == "__main__":
    main()
