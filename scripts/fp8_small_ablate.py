"""Where the small-M FP8 kernel's time goes: the shipped kernel against variants that leave one stage out
(temporary constexpr knobs in ``kernels._fp8_small_kernel``, git history 2026-11-29 ~10:20 UTC), same
process, CUDA graphs of 8 calls on 8 weight copies, µs per call; bf16 cuBLAS in the same run.

    python scripts/fp8_small_ablate.py OUT.json [MS]

Variants (interleaved, two rounds): ``shipped``; ``ahead``: the plain map's weight scale read one K step
ahead, as row maps do; ``nofix``: no split-K fix-up (each split stores its partial, no counter, no
sum); ``noscale``: W8A16 without the per-row power-of-two scaling (wrong numbers, timing only);
``noloop``: no K steps (launch, PDL wait, fix-up, store); ``empty``: no K steps and no fix-up.
Ablated variants give wrong outputs: their error column is not a check.
"""

from __future__ import annotations

import json
import statistics
import sys

from fp8_gemv_probe import _measure, layer_calls

from deltaserve.bench.common import device_record
from deltaserve.ops.fp8 import kernels

VARIANTS = [
    ("shipped", 0, False), ("ahead", 0, True), ("nofix", 1, False), ("noscale", 2, False),
    ("noloop", 4, False), ("empty", 5, False),
]  # fmt: skip


def run(ms: tuple[int, ...]) -> list[dict]:
    rows: list[dict] = []
    try:
        for base, fns, ref in layer_calls(ms):
            for _ in range(2):
                for name, ablate, ahead in VARIANTS:
                    kernels.ABLATE, kernels.PLAIN_SCALE_AHEAD = ablate, ahead
                    _measure(
                        rows,
                        dict(base, cfg=list(kernels.small_tile(base["N"], base["mode"] != "w8a16", False))),
                        name,
                        fns,
                        ref,
                    )
    finally:
        kernels.ABLATE, kernels.PLAIN_SCALE_AHEAD = 0, False
    return rows


def summary(rows: list[dict]) -> None:
    table: dict = {}
    for r in rows:
        if "us" in r:
            key = (r["N"], r["K"], r["M"], r["mode"])
            table.setdefault(key, {"bf16": round(r["bf16_us"], 2)}).setdefault(r["kernel"], []).append(
                r["us"]
            )
    for key, v in sorted(table.items()):
        print(
            *key, json.dumps({k: x if k == "bf16" else round(statistics.median(x), 2) for k, x in v.items()})
        )
    for r in rows:
        if r["kernel"] in ("shipped", "ahead") and r.get("err", 1) >= 2e-2:
            print("ERR", r)


def main() -> None:
    ms = tuple(int(v) for v in sys.argv[2].split(",")) if len(sys.argv) > 2 else (16, 4)
    rows = run(ms)
    with open(sys.argv[1], "w") as f:
        json.dump(dict(device=device_record(), rows=rows), f, indent=1)
    summary(rows)


if __name__ == "__main__":
    main()
