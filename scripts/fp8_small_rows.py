"""Small-M block-FP8 GEMM: the activations as the MMA's 16-row side (mma.sync, both operands in
registers; ``SmallTile.swap`` False) against the swap-AB form and bf16 cuBLAS, same process, CUDA graphs
of 8 calls on 8 weight copies (µs per call).

    python scripts/fp8_small_rows.py OUT.json [sweep|ship|ship-rowmap|nosplit|nosplit-pf|prefetch|tiles] [MS]

Why: the swap-AB kernel's W8A16 step (sm_90 SASS, Triton 3.6) widens each e4m3 weight element with three
conversions (e4m3 -> f16 -> f32, scale, f32 -> bf16) and round-trips the bf16 tile through shared memory
(STS, three barriers, LDSM) to reach wgmma's register operand. With the activations on the MMA's M side
the e4m3 tile is read from the pipeline's shared memory straight into the operand layout and widened to
fp16 with one conversion per pair (the bf16 activations are scaled per row by a power of two into
fp16's range, exactly; ``kernels._pow2_fp16_rows``), and each step's product is scaled in registers.

"sweep": both forms over tiles, split targets and PDL modes (the same tile for W8A16 and W8A8).
"nosplit": the row form without split-K (``NOSPLIT``) against the shipped tiers; "nosplit-pf" the same
tiles with the one-step L2 prefetch (for M = 2-4 at wide N, where the activation rows are few).
"tiles": row-form tiles around the shipped ones, all with the one-step prefetch (``TILES``).
"prefetch": the shipped tiles with their first K steps' weight lines prefetched into L2 before the PDL
wait (``SmallTile.prefetch``), against the tiers shipped then (none), two interleaved rounds.
"ship": the shipped tiers against the same tiers without their L2 prefetch, interleaved rounds (until
2026-11-29 ~10:20: against the swap-AB tile shipped before the row form, ``SmallTile(True, 64, 4, 3, 264, 0)``);
"ship-rowmap": the same through an explicit row map (per-column weight scales, as for Qwen3-Next's
de-interleaved in_proj).
(A bulk L2 prefetch of each program's weights before the PDL wait was also tried, in call 2 of
BENCHMARKS.md 2026-11-29 ~08:20: slower, up to 31 %, everywhere but at 2048x4096 with PDL 2, where
it was within 3 %; the code is gone. So was, 2026-11-29 ~12:10, a split-K reduction without the fence and
the counter: each split but the last stored its partial as 8-byte {fp32, flag} packets and exited, and the
last split polled them: 2.0-2.5 us slower at M=16 and 0.3-0.7 us at M=2-3, even without polling. Then
4-byte partials with the flag in the lowest bit, every split storing and taking a relaxed arrival ticket and
the last polling (no fence, no acquire-release): even at M=2-3 (within 0.2 us), 1.3-2.5 us slower at M=16
with scalar, vector or plain stores alike. The last split's reads found every flag up at once; its clears
cost the 1.2-1.5 us, and without them the chain tied the fence (branch exp/split-flags; BENCHMARKS.md
2026-11-29 ~12:10). And, 2026-11-29 ~14:50, the W8A16 step as a bf16 MMA (e4m3 widened to bf16, the
activations unscaled) instead of fp16 on power-of-two-scaled rows: 0.4-0.8 us slower at N = 2048, and at
12288x2048 as slow as bf16 cuBLAS.)
"""

from __future__ import annotations

import json
import sys

from fp8_gemv_probe import _measure, everywhere, layer_calls, print_best, tiers_with

from deltaserve.bench.common import device_record
from deltaserve.ops.fp8 import kernels

ROWS_TILES = [  # (BN, warps, stages, split-K target programs)
    (bn, w, st, t)
    for bn, w in ((64, 4), (64, 8), (128, 4), (128, 8))
    for st in (3, 4)
    for t in ((132, 264) if bn == 128 else (264,))
]
SWEEP = [  # (kernel name, tile): PDL 0 off, 1 trigger after the loop, 2 at once
    ("swap-AB" if swap else "rows", kernels.SmallTile(swap, *tile, pdl))
    for swap, tiles in ((True, [(64, 4, 3, 264)]), (False, ROWS_TILES))
    for tile in tiles
    for pdl in (0, 1, 2)
]
SHIPPED = dict(kernels.CONFIG)
# (K steps prefetched into L2 before the PDL wait, PDL mode) on the shipped tiles
PREFETCH = [(1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2)]
# row-form tiles with the one-step prefetch and PDL 2, for the "tiles" section: split targets 132 / 396
# around the shipped 264, 4 stages, 8 warps, 128-row tiles
TILES = [
    kernels.SmallTile(False, bn, warps, stages, target, 2, 1)
    for bn, warps, stages, target in (
        (64, 4, 3, 132), (64, 4, 4, 132), (64, 4, 4, 264), (64, 8, 3, 264), (64, 4, 3, 396), (128, 8, 3, 264),
        (128, 4, 3, 132),
    )
]  # fmt: skip
# one program per output tile over all of K (split target 0: no split-K fix-up), narrow tiles and deep
# pipelines so that ~128-384 programs keep enough weight bytes in flight
NOSPLIT = [
    kernels.SmallTile(False, bn, warps, stages, 0, 2)
    for bn, warps_all, stages_all in (
        (16, (1, 2, 4), (4, 6, 8, 12)),
        (32, (2, 4), (4, 6, 8)),
        (64, (4,), (4, 6, 8)),
    )
    for warps in warps_all
    for stages in stages_all
]


def _variants(section: str) -> list[tuple[str, dict]]:
    """(name, CONFIG overrides) per variant; the GEMV is off so that M=2 reaches the small-M kernel."""
    if section.startswith("ship"):
        return [("noprefetch", tiers_with(SHIPPED, prefetch=0)), ("shipped", {})] * 2
    if section == "nosplit":
        return [("shipped", {})] + [(f"nosplit{t.bn}", everywhere(t)) for t in NOSPLIT]
    if section == "nosplit-pf":
        return [("shipped", {})] + [(f"nosplit{t.bn}", everywhere(t._replace(prefetch=1))) for t in NOSPLIT]
    if section == "tiles":
        return ([("shipped", {})] + [("/".join(map(str, t[1:5])), everywhere(t)) for t in TILES]) * 2
    if section == "prefetch":
        variants = [(f"pf{pf}pdl{pdl}", tiers_with(SHIPPED, prefetch=pf, pdl=pdl)) for pf, pdl in PREFETCH]
        return ([("shipped", {})] + variants) * 2
    return [(name, everywhere(t)) for name, t in SWEEP]


def run(section: str, ms: tuple[int, ...]) -> list[dict]:
    rows: list[dict] = []
    with kernels.config_restored() as saved:
        for base, fns, ref in layer_calls(ms, row_map=section == "ship-rowmap"):
            for name, over in _variants(section):
                kernels.CONFIG.clear()
                kernels.CONFIG.update(saved, gemv_m_max=0, **over)
                cfg = tuple(kernels.small_tile(base["N"], base["mode"] != "w8a16", section == "ship-rowmap"))
                _measure(rows, dict(base, cfg=cfg), name, fns, ref)
    return rows


def summary(rows: list[dict]) -> None:
    """Per shape, M and mode: the fastest config of each (kernel, PDL mode), µs."""
    best: dict = {}
    for r in rows:
        if "us" not in r or r["err"] >= 2e-2:
            continue
        key = (r["N"], r["K"], r["M"], r["mode"])
        var = (
            r["kernel"] if "pdl" in r["kernel"] or "/" in r["kernel"] else f"{r['kernel']}{r['cfg'][5]}"
        )  # cfg[5]: its PDL mode
        cur = best.setdefault(key, {"bf16": round(r["bf16_us"], 2)})
        cur[var] = min(cur.get(var, 1e9), round(r["us"], 2))
    for key, v in sorted(best.items()):
        print(*key, json.dumps(v))


def main() -> None:
    out = sys.argv[1]
    section = sys.argv[2] if len(sys.argv) > 2 else "sweep"
    ms = tuple(int(v) for v in sys.argv[3].split(",")) if len(sys.argv) > 3 else (16, 4, 2)
    rows = run(section, ms)
    with open(out, "w") as f:
        json.dump(dict(device=device_record(), section=section, rows=rows), f, indent=1)
    print_best(rows)
    summary(rows)


if __name__ == "__main__":
    main()
