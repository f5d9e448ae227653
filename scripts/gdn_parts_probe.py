"""GDN prefill in parts (device machine): each sequence's chunks split into parts scanned side by side
(phase 1: local states and transitions; combine; phase 2: outputs), against the one-pass and
pipelined-segment plans, the previous commit's prefill (``scripts/_prefill_before.py`` when present)
and fla 0.6.0, in one process. Device wall times as in ``gdn_pipeline_probe.py`` (launches queued
behind a GPU sleep); accuracy against the fp32 reference.

python scripts/gdn_parts_probe.py OUT.json [SHAPES: comma list of label substrings]
(the "before" rows: ``git show BASE:deltaserve/ops/gdn/prefill.py > scripts/_prefill_before.py`` first,
left uncommitted; env PARTS / BVS / STAGES pick the sweep, ACCURACY=0 skips the reference checks,
VARIANTS='{"name": {_config}, ...}' adds named ``_config`` variants to every shape)
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import traceback

import torch
from gdn_pipeline_probe import _case, _fla, _ours
from gdn_profile import reference_errors, single_sequence_case

from deltaserve.bench.common import device_record, profiled, time_cuda, time_cuda_queued

SHAPES = [
    ("hk2/hv8 1x32768", 2, 8, [32768]),
    ("hk4/hv8 1x32768", 4, 8, [32768]),
    ("hk16/hv32 1x32768", 16, 32, [32768]),
    ("hk16/hv64 1x32768", 16, 64, [32768]),
    ("hk2/hv8 1x8192", 2, 8, [8192]),
    ("hk16/hv32 1x4096", 16, 32, [4096]),
    ("hk16/hv32 8x2048", 16, 32, [2048] * 8),
    ("hk16/hv32 4x8192", 16, 32, [8192] * 4),
    ("hk16/hv32 8x1024", 16, 32, [1024] * 8),
    ("hk16/hv32 2x16384", 16, 32, [16384] * 2),
    ("hk16/hv32 4x4096", 16, 32, [4096] * 4),
    ("hk4/hv16 1x32768", 4, 16, [32768]),
    ("hk8/hv16 1x32768", 8, 16, [32768]),
    ("hk2/hv8 1x65536", 2, 8, [65536]),
    ("hk2/hv8 1x16384", 2, 8, [16384]),
    ("hk2/hv8 2x16384", 2, 8, [16384] * 2),
    ("hk2/hv4 1x32768", 2, 4, [32768]),
]
ONE_PASS = {"part_chunks": 0, "segment_chunks": 0}


def _parts_variants(n_chunks: int) -> list[tuple[str, dict]]:
    """Env PARTS, BVS, STAGES (comma lists) pick the sweep; default 2-8 parts x BV 16/32 x 2-3 stages."""
    out = []
    for parts in _ints("PARTS", "2,3,4,6,8"):
        for bv in _ints("BVS", "16,32"):
            for stages in _ints("STAGES", "2,3"):
                cfg = {"part_chunks": -(-n_chunks // parts), "BV": bv, "part_stages": stages}
                out.append((f"parts {parts} BV {bv} stages {stages}", cfg))
    return out


def _variants() -> dict[str, dict]:
    """Env VARIANTS: named ``_config`` variants (JSON object)."""
    return json.loads(os.environ.get("VARIANTS", "{}"))


def _ints(name: str, default: str) -> list[int]:
    return [int(v) for v in os.environ.get(name, default).split(",") if v]


def launch_breakdown_us(fn, calls: int = 3) -> list[tuple[str, float]]:
    """Device µs of each kernel launch of one ``fn()`` call, in launch order (medians over ``calls``
    calls), so that two launches of one kernel (the parts' two scan phases) stay apart."""
    evs = [
        e
        for e in profiled(fn, calls).events()
        if e.device_type == torch.autograd.DeviceType.CUDA and e.name.startswith("_")
    ]
    evs.sort(key=lambda e: e.time_range.start)
    per = len(evs) // calls
    return [
        (evs[i].name, statistics.median(getattr(evs[i + c * per], "device_time", 0.0) for c in range(calls)))
        for i in range(per)
    ]


def _before():
    path = os.path.join(os.path.dirname(__file__), "_prefill_before.py")
    if not os.path.exists(path):
        return None
    spec = importlib.util.spec_from_file_location("_prefill_before", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(res: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(res, f, indent=1)


def main() -> None:
    out_path = sys.argv[1]
    only = sys.argv[2] if len(sys.argv) > 2 else ""
    res: dict = {"device": device_record(), "accuracy": [], "rows": []}
    print(res["device"], flush=True)
    cases = ((4096, 16, 32, False, 4), (4096, 16, 32, True, 4), (4096, 16, 32, True, 16),
             (32768, 2, 8, False, 16), (32768, 2, 8, True, 16))  # fmt: skip
    for t, hk, hv, hard, parts in cases if os.environ.get("ACCURACY", "1") != "0" else ():
        variants = [("one pass", ONE_PASS), (f"parts {parts}", {"part_chunks": -(-t // 64 // parts)})]
        variants += [(name, {**ONE_PASS, **cfg}) for name, cfg in _variants().items()]
        for name, cfg in variants:
            try:
                x, cu, pool, sl, hi = single_sequence_case(t, hk, hv, hard)
                o = _ours(x, cu, pool, sl, hi, cfg)()
                acc = {
                    "case": f"{hk}/{hv} x {t}",
                    "variant": name,
                    "hard": hard,
                    **reference_errors(x, cu, o, pool),
                }
            except Exception:
                acc = {
                    "case": f"{hk}/{hv} x {t}",
                    "variant": name,
                    "hard": hard,
                    "error": traceback.format_exc()[-800:],
                }
            print("accuracy", acc, flush=True)
            res["accuracy"].append(acc)
    _write(res, out_path)
    before = _before()
    for label, hk, hv, lens in SHAPES:
        if only and not any(w in label for w in only.split(",")):
            continue
        x, cu, pool, sl, hi = _case(hk, hv, lens)
        n_chunks = -(-max(lens) // 64)
        fns = []
        fla = _fla(x, cu)
        if fla is not None:
            fns.append(("fla 0.6.0", fla, True))
        if before is not None:
            fns.append(("before (HEAD prefill)", _ours(x, cu, pool, sl, hi, None, before.gdn_prefill), True))
        fns.append(("default", _ours(x, cu, pool, sl, hi, {}), True))
        fns.append(("one pass", _ours(x, cu, pool, sl, hi, ONE_PASS), False))
        fns.append(("segments (old default plan)", _ours(x, cu, pool, sl, hi, {"part_chunks": 0}), False))
        for name, cfg in _variants().items():
            fns.append((name, _ours(x, cu, pool, sl, hi, cfg), False))
        if hv * len(lens) <= 16:  # parts only where the one-pass scan leaves SMs idle
            for name, cfg in _parts_variants(n_chunks):
                fns.append((name, _ours(x, cu, pool, sl, hi, cfg), False))
        for name, fn, host in fns:
            try:
                row = {"shape": label, "variant": name, "queued_ms": time_cuda_queued(fn)}
                if host:
                    row["host_timed_ms"] = time_cuda(fn, rep=10)
                if name.startswith(("parts", "default", "one pass", "v:", "before")):
                    row["launches_us"] = launch_breakdown_us(fn)
            except Exception:
                row = {"shape": label, "variant": name, "error": traceback.format_exc()[-800:]}
            print(row, flush=True)
            res["rows"].append(row)
        _write(res, out_path)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
