"""Where one CUDA-graph decode step's GPU time goes (device machine): kernels grouped by name.

python scripts/decode_step_profile.py OUT.json [--layers 8] [--batch 1] [--engine-steps 50]

Builds the offline benchmark's real-width random Qwen3-Next (`deltaserve.bench.offline`), warms the
engine up, then profiles graph replays of one decode step (all-padding inputs, as
`graphs.time_replay`) and prints per-kernel-name device µs per step, largest first, beside the step's
weight-read floor.

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
import time
from pathlib import Path

import torch

from deltaserve.bench import offline
from deltaserve.bench.common import bytes_floor_ms, kernel_device_us


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--engine-steps", type=int, default=0, help="also profile this many engine.step() calls")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ds-prof-")))
        engine, model = offline.graphed_random_engine(
            workdir, args.layers, max_model_len=256, max_num_seqs=max(args.batch, 1)
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


def idle_by_gap(spans: list[tuple[float, float, str]]) -> tuple[float, float, dict[str, float]]:
    """Device events `(start, end, name)` (µs) -> (busy µs: their union, window µs: first start to last
    end, idle µs by "before -> after" event pair around each gap)."""
    spans = sorted(spans)
    busy, gaps = spans[0][1] - spans[0][0], {}
    cur_end, cur_name = spans[0][1], spans[0][2]
    for start, end, name in spans[1:]:
        if start > cur_end:  # the device idles from cur_end to start
            key = f"{cur_name[:50]} -> {name[:50]}"
            gaps[key] = gaps.get(key, 0.0) + (start - cur_end)
            busy += end - start
            cur_end, cur_name = end, name
        elif end > cur_end:
            busy += end - cur_end
            cur_end, cur_name = end, name
    return busy, max(e for _, e, _ in spans) - spans[0][0], gaps


def engine_step_profile(engine, batch: int, steps: int) -> dict:
    """Profile `steps` steady decode `engine.step()` calls; device busy / idle per step and the idle
    time by the (before, after) device-event pair around each gap."""
    from deltaserve.engine.sampling_params import SamplingParams

    limit = engine.config.max_model_len
    prompt_len = 16
    if prompt_len + steps + 8 > limit:
        raise SystemExit(
            f"--engine-steps {steps}: at most {limit - prompt_len - 8} with max_model_len {limit}"
        )
    params = SamplingParams(temperature=0.0, max_tokens=steps + 8, ignore_eos=True)
    for b in range(batch):
        engine.add_request(f"prof-{b}", [11 + 7 * b + i for i in range(prompt_len)], params)
    for _ in range(4):  # prefill, then into the steady (overlapped) decode chain
        engine.step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
        wall_s = time.perf_counter() - t0
    while engine.has_unfinished_requests():
        engine.step()
    spans = []
    for ev in prof.events():
        tr = getattr(ev, "time_range", None)
        if ev.device_type == torch.autograd.DeviceType.CUDA and tr is not None and tr.end > tr.start:
            spans.append((tr.start, tr.end, ev.name))
    if not spans:
        raise SystemExit("the profiler recorded no device events")
    busy, window, gaps = idle_by_gap(spans)
    per_kernel: dict[str, float] = {}
    for start, end, name in spans:
        per_kernel[name[:90]] = per_kernel.get(name[:90], 0.0) + (end - start) / steps
    out = {
        "batch": batch,
        "steps": steps,
        "wall_ms_per_step": wall_s * 1e3 / steps,
        "device_window_ms_per_step": window / 1e3 / steps,
        "device_busy_ms_per_step": busy / 1e3 / steps,
        "device_idle_ms_per_step": (window - busy) / 1e3 / steps,
        "idle_us_per_step_by_gap": {
            k: v / steps for k, v in sorted(gaps.items(), key=lambda kv: -kv[1])[:20]
        },
    }
    print(
        f"engine.step() x{steps} at B={batch} (profiler on): wall {out['wall_ms_per_step']:.3f} ms/step, "
        f"device busy {out['device_busy_ms_per_step']:.3f}, idle {out['device_idle_ms_per_step']:.3f} ms/step",
        flush=True,
    )
    for k, us in list(out["idle_us_per_step_by_gap"].items())[:12]:
        print(f"   idle {us:7.1f} us/step  {k}", flush=True)
    out["device_us_per_step_by_name"] = dict(sorted(per_kernel.items(), key=lambda kv: -kv[1])[:30])
    for k, us in list(out["device_us_per_step_by_name"].items())[:15]:
        print(f"   busy {us:7.1f} us/step  {k}", flush=True)
    return out


if __name__ == "__main__":
    main()
