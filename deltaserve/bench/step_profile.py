"""Device time of real decode steps: profile `engine.step()` calls of a steady greedy decode batch
(the overlap path: staging, graph replay, sampling, copies) and report, per step, the wall time, the
device busy time (the union of all kernels and copies), the device idle time inside the window split
by the pair of device events around each gap (where the GPU waits on the host), and the device time
by kernel name. Unlike a graph replay on padding rows, this counts the real rows' GDN state and KV
traffic and their real expert routing.
"""

from __future__ import annotations

import time

import torch


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


def engine_step_profile(engine, batch: int, steps: int, *, verbose: bool = True) -> dict:
    """Profile `steps` steady decode `engine.step()` calls of `batch` new greedy requests (16-token
    prompts; the engine must have no other requests); device busy / idle per step, the idle time by
    the (before, after) device-event pair around each gap, device time by kernel name. `verbose`: print
    the top gaps and kernels under the summary line."""
    from deltaserve.engine.sampling_params import SamplingParams

    limit = engine.config.max_model_len
    prompt_len = 16
    if prompt_len + steps + 8 > limit:
        raise ValueError(f"steps: at most {limit - prompt_len - 8} with max_model_len {limit}, got {steps}")
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
        raise RuntimeError("the profiler recorded no device events")
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
    out["device_us_per_step_by_name"] = dict(sorted(per_kernel.items(), key=lambda kv: -kv[1])[:30])
    if verbose:
        for k, us in list(out["idle_us_per_step_by_gap"].items())[:12]:
            print(f"   idle {us:7.1f} us/step  {k}", flush=True)
        for k, us in list(out["device_us_per_step_by_name"].items())[:15]:
            print(f"   busy {us:7.1f} us/step  {k}", flush=True)
    return out
