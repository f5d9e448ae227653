"""Programmatic dependent launch, on and off, in one process (device machine).

python scripts/pdl_ab.py OUT.json [--layers 8] [--rounds 3] [--replays 200]

Builds the offline benchmark's real-width random Qwen3-Next (`deltaserve.bench.offline`) with one
decode graph (B=1), then alternates `ops.pdl.ENABLED` off / on for `--rounds` rounds: re-captures the
graph, checks its replay's logits are bitwise equal with PDL off and on (PDL changes launch order
only), and times the replay (median GPU ms over `--replays`). Then runs a steady greedy B=1 decode
through `engine.step()` with each setting and reports the median wall ms per step. Prints both beside the
weight-read floor.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from deltaserve.bench import offline
from deltaserve.bench.common import bytes_floor_ms
from deltaserve.ops import pdl


def steady_step_ms(engine, steps: int) -> float:
    """Median wall ms per `engine.step()` of one greedy request in steady (overlapped) decode."""
    from deltaserve.engine.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=steps + 8, ignore_eos=True)
    engine.add_request(f"ab-{time.monotonic_ns()}", [11 + i for i in range(16)], params)
    for _ in range(4):
        engine.step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        engine.step()
        times.append((time.perf_counter() - t0) * 1e3)
    while engine.has_unfinished_requests():
        engine.step()
    return statistics.median(times)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--replays", type=int, default=200)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ds-pdl-")))
        engine, model = offline.graphed_random_engine(workdir, args.layers, max_model_len=512, max_num_seqs=1)
        graphs = engine.runner.graphs
        floor_ms = bytes_floor_ms(offline.decode_bytes_per_token(model))
        rows = []
        for rnd in range(args.rounds):
            # replays first, both settings on the same cache contents (padding rows read page 0, which
            # real requests write): the logits must be bitwise equal, PDL changes launch order only
            logits = {}
            for on in (False, True):
                pdl.ENABLED = on
                graphs.capture()
                graphs.time_replay(1, iters=5)
                logits[on] = graphs.logits[1].clone()
                ms = graphs.time_replay(1, iters=args.replays)
                rows.append({"round": rnd, "pdl": on, "replay_ms": ms})
            same = bool(torch.equal(logits[False], logits[True]))
            for on in (False, True):
                pdl.ENABLED = on
                graphs.capture()
                row = rows[-2 + on]
                row.update(step_ms=steady_step_ms(engine, args.steps), logits_equal=same)
                print(f"round {rnd} pdl={'on ' if on else 'off'}  replay {row['replay_ms']:.4f} ms  engine.step "
                      f"{row['step_ms']:.4f} ms  replay logits off == on: {same}", flush=True)  # fmt: skip
        summary = {}
        for on in (False, True):
            sel = [r for r in rows if r["pdl"] == on]
            summary["on" if on else "off"] = {
                "replay_ms": statistics.median(r["replay_ms"] for r in sel),
                "step_ms": statistics.median(r["step_ms"] for r in sel),
            }
        print(f"{torch.cuda.get_device_name()}: B=1 floor {floor_ms:.3f} ms; median replay off "
              f"{summary['off']['replay_ms']:.4f} / on {summary['on']['replay_ms']:.4f} ms; engine.step off "
              f"{summary['off']['step_ms']:.4f} / on {summary['on']['step_ms']:.4f} ms", flush=True)  # fmt: skip
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "floor_ms": floor_ms, "rows": rows,
                       "summary": summary, "all_logits_equal": all(r["logits_equal"] for r in rows)},
                      f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
