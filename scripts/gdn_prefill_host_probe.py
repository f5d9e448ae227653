"""Host cost of the GDN prefill's launches, scan tiles by TMA descriptors against pointers (and fla 0.6.0's
call for scale): per shape, interleaved rounds of

  host_us     one call's Python + launch time on an idle device (``bench.common.host_us``),
  timed_ms    CUDA events around the call (``time_cuda``: what `bench.ops gdn`'s host-timed column shows),
  device_ms   the call queued behind a GPU sleep (``time_cuda_queued``: device time without launch gaps).

    python scripts/gdn_prefill_host_probe.py OUT.json [ROUNDS] [SHAPES: comma list of label substrings]

Rounds alternate the variants' order (ABBA); env NO_FLA=1 leaves fla out (its large allocations between
our calls make the caching allocator's state, and so the host figures, drift); PROFILE=1 adds a cProfile
of 100 calls per variant (top host functions by own time).
"""

from __future__ import annotations

import json
import os
import statistics
import sys

import torch
from gdn_pipeline_probe import _case, _fla, _ours

from deltaserve.bench.common import device_record, host_us, time_cuda, time_cuda_queued

SHAPES = [
    ("hk16/hv32 1x32768", 16, 32, [32768]),
    ("hk16/hv32 1x4096", 16, 32, [4096]),
    ("hk2/hv8 2x16384", 2, 8, [16384] * 2),
    ("hk2/hv8 1x32768", 2, 8, [32768]),
    ("hk16/hv32 8x2048", 16, 32, [2048] * 8),
]


def main() -> None:
    out_path = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    only = sys.argv[3] if len(sys.argv) > 3 else ""
    res: dict = {"device": device_record(), "rows": []}
    print(res["device"], flush=True)
    for label, hk, hv, lens in SHAPES:
        if only and not any(w in label for w in only.split(",")):
            continue
        x, cu, pool, sl, hi = _case(hk, hv, lens)
        fns = [
            ("pointers", _ours(x, cu, pool, sl, hi, {"tma": False})),
            ("tma", _ours(x, cu, pool, sl, hi, {"tma": True})),
        ]
        fla = None if os.environ.get("NO_FLA") == "1" else _fla(x, cu)
        if fla is not None:
            fns.append(("fla 0.6.0", fla))
        for rnd in range(rounds):
            for name, fn in fns if rnd % 2 == 0 else fns[::-1]:
                row = {
                    "shape": label,
                    "variant": name,
                    "round": rnd,
                    "host_us": host_us(fn, reps=30),
                    "timed_ms": time_cuda(fn, rep=10),
                    "device_ms": time_cuda_queued(fn),
                }
                res["rows"].append(row)
        for name, _ in fns:
            mine = [r for r in res["rows"] if r["shape"] == label and r["variant"] == name]
            meds = {
                k: round(statistics.median(r[k] for r in mine), 4)
                for k in ("host_us", "timed_ms", "device_ms")
            }
            per_round = [round(r["host_us"]) for r in mine]
            print(f"{label} | {name} | {meds} | host per round {per_round}", flush=True)
        with open(out_path, "w") as f:
            json.dump(res, f, indent=1)
        if os.environ.get("PROFILE") == "1":
            _profile(fns)
        torch.cuda.empty_cache()


def _profile(fns: list, calls: int = 100) -> None:
    """cProfile of ``calls`` calls per variant (GPU kept busy so that no launch waits): the top host
    functions by own time."""
    import cProfile
    import io
    import pstats

    for name, fn in fns:
        fn()
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        torch.cuda._sleep(2_000_000_000)  # ~1 s: the launches queue behind it
        prof.enable()
        for _ in range(calls):
            fn()
        prof.disable()
        torch.cuda.synchronize()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(14)
        print(f"--- cProfile {name}, {calls} calls", buf.getvalue()[-3500:], flush=True)


if __name__ == "__main__":
    main()
