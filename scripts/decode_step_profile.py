"""Where one CUDA-graph decode step's GPU time goes (device machine): kernels grouped by name.

python scripts/decode_step_profile.py OUT.json [--layers 8] [--batch 1] [--engine-steps 50] [--fp8]

Builds the offline benchmark's real-width random Qwen3-Next (`deltaserve.bench.offline`), warms the
engine up, then profiles graph replays of one decode step (all-padding inputs, as
`graphs.time_replay`) and prints per-kernel-name device µs per step, largest first, beside the step's
weight-read floor. `--fp8` serves the same random weights as a block-FP8 checkpoint.

`--engine-steps N` also profiles N real `engine.step()` calls of a steady greedy decode batch (the
overlap path: staging, graph replay, sampling, copies) and reports, per step, the wall time, the
device busy time (union of all kernels and copies) and the device idle time inside the window, with
the idle time split by the pair of device events around each gap (where the GPU waits on the host),
and the device time per step by kernel name (to set beside the replay's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path

import torch

from deltaserve.bench import offline
from deltaserve.bench.common import bytes_floor_ms, kernel_device_us
from deltaserve.bench.step_profile import engine_step_profile


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--engine-steps", type=int, default=0, help="also profile this many engine.step() calls")
    ap.add_argument(
        "--fp8", action="store_true", help="block-FP8 weights (official layout, quantised on load)"
    )
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ds-prof-")))
        engine, model = offline.graphed_random_engine(
            workdir, args.layers, max_model_len=256, max_num_seqs=max(args.batch, 1), fp8=args.fp8
        )
        offline.run_ours(engine, [[11 + i for i in range(16)]] * args.batch, 4)
        graphs = engine.runner.graphs
        step_ms = graphs.time_replay(args.batch)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            graphs.time_replay(args.batch, iters=args.replays)
        per = kernel_device_us(prof)
        rows = sorted(
            ({"kernel": k[:90], "us_per_step": sum(v) / args.replays, "calls_per_step": len(v) / args.replays}
             for k, v in per.items()),
            key=lambda r: -r["us_per_step"],
        )  # fmt: skip
        floor_ms = bytes_floor_ms(offline.decode_bytes_per_token(model))
        total = sum(r["us_per_step"] for r in rows)
        print(f"{torch.cuda.get_device_name()}: step replay {step_ms:.3f} ms, kernel sum {total / 1e3:.3f} ms, "
              f"weight-read floor {floor_ms:.3f} ms", flush=True)  # fmt: skip
        for r in rows[:40]:
            print(f"{r['us_per_step']:9.1f} us  x{r['calls_per_step']:5.1f}  {r['kernel']}", flush=True)
        result = {"step_ms": step_ms, "floor_ms": floor_ms, "rows": rows}
        if args.engine_steps:
            result["engine_steps"] = engine_step_profile(engine, args.batch, args.engine_steps)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
