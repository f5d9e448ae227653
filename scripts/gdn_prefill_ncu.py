"""ncu target: one GDN prefill call (its prep, inverse and scan launches) on a given shape and plan.

    ncu --profile-from-start off ... python3 scripts/gdn_prefill_ncu.py HK:HV:LENS ['{_config json}']

LENS is a length or ``LENxN`` (N sequences of LEN tokens), e.g. ``16:32:2048x8``. Inputs are made and the
kernels compiled and warmed before ``cudaProfilerStart``; the call then runs once inside the profiled
range. ``scripts/gpu-call-prefill-ncu`` runs it under ncu and summarises the counters per kernel.
"""

from __future__ import annotations

import json
import sys

from gdn_pipeline_probe import _case, _ours

from deltaserve.bench.common import ncu_range


def parse_case(spec: str) -> tuple[int, int, list[int]]:
    """``HK:HV:LEN[xN]`` -> (hk, hv, lens)."""
    hk, hv, lens = spec.split(":")
    length, _, count = lens.partition("x")
    return int(hk), int(hv), [int(length)] * int(count or 1)


def main() -> None:
    hk, hv, lens = parse_case(sys.argv[1])
    cfg = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
    fn = _ours(*_case(hk, hv, lens), cfg)
    ncu_range(fn)


if __name__ == "__main__":
    main()
