"""Shared helpers for the op benchmarks: timing (device, host, per kernel), device record, floors, tables.

Timing is always with CUDA events on the current stream after warm-up, median over repeats. The
floors use the H100 ceilings measured on this project's card (DESIGN.md section 6): 3.0 TB/s device
copy and 750 TFLOP/s bf16 matrix rate (override with DELTASERVE_BENCH_BW / DELTASERVE_BENCH_FLOPS).
"""

from __future__ import annotations

import datetime
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from deltaserve import env

COPY_BW: float = env.get("DELTASERVE_BENCH_BW")  # bytes/s, read + write counted
MATMUL_RATE: float = env.get("DELTASERVE_BENCH_FLOPS")  # FLOP/s, bf16 dense


def bytes_floor_ms(n_bytes: float) -> float:
    """Time to move n_bytes through device memory at the copy ceiling, in ms."""
    return n_bytes / COPY_BW * 1e3


def flops_floor_ms(flops: float) -> float:
    """Time for flops at the bf16 matrix ceiling, in ms."""
    return flops / MATMUL_RATE * 1e3


def time_cuda(fn: Callable[[], Any], *, warmup: int = 5, rep: int = 30, min_ms: float = 50.0) -> float:
    """Median ms of fn() (CUDA events around each call). Repeats grow until about min_ms total."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times: list[float] = []
    total = 0.0
    while len(times) < rep or (total < min_ms and len(times) < 20 * rep):
        times.append(_event_ms(fn))
        total += times[-1]
    return statistics.median(times)


def _event_ms(fn: Callable[[], Any], still_pending: torch.cuda.Event | None = None) -> float:
    """ms between CUDA events recorded on the current stream just before and after fn() (waits for it).
    ``still_pending``: an event that must not have completed by the time fn() returns (RuntimeError)."""
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    if still_pending is not None and still_pending.query():
        raise RuntimeError("time_cuda_queued: the GPU sleep ended before fn() returned (a host sync in fn?)")
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def time_cuda_queued(fn: Callable[[], Any], *, reps: int = 10) -> float:
    """Median device wall ms of fn() with every launch of a call queued behind a ~5 ms GPU sleep: the
    GPU time of the call without the host's launch gaps (``time_cuda`` includes them).

    Raises RuntimeError when the sleep had ended by the time fn() returned: fn synchronised with the
    device (e.g. a ``.cpu()`` copy) or took longer to launch than the sleep lasts, so the GPU idled
    inside the timed span and the figure would be host time."""
    fn()
    torch.cuda.synchronize()
    times: list[float] = []
    for _ in range(reps):
        torch.cuda._sleep(10_000_000)  # ~5 ms at ~2 GHz, meanwhile the host queues the whole call
        slept = torch.cuda.Event()
        slept.record()
        times.append(_event_ms(fn, slept))
    return statistics.median(times)


def time_cuda_graph(fns: Sequence[Callable[[], Any]], *, replays: int = 30) -> float:
    """Per-call ms when all of fns run back to back inside one captured CUDA graph (median over replays).

    Pass several calls (e.g. one per layer, each on its own buffers) so launch gaps inside the graph
    are counted the way a captured decode step sees them.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            for fn in fns:
                fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(fns))
    del graph
    return statistics.median(times)


def host_us(fn: Callable[[], Any], *, reps: int = 50) -> float:
    """Median host µs of one fn() call started on an idle device (Python + launch cost; the GPU work it
    queues is not waited for)."""
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(out)


def kernel_device_us(prof: Any) -> dict[str, list[float]]:
    """Device µs of every CUDA kernel a finished ``torch.profiler.profile`` recorded, by kernel name."""
    out: dict[str, list[float]] = {}
    for ev in prof.events():
        t_us = getattr(ev, "device_time", None) or getattr(ev, "cuda_time", 0.0)
        if t_us and ev.device_type == torch.autograd.DeviceType.CUDA:
            out.setdefault(ev.name, []).append(t_us)
    return out


def profiled(fn: Callable[[], Any], calls: int) -> Any:
    """A finished ``torch.profiler.profile`` (CUDA activity) of ``calls`` calls of ``fn``, after one
    warm-up call."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return prof


def ncu_range(fn: Callable[[], Any], calls: int = 1, warmup: int = 3) -> None:
    """``calls`` calls of ``fn`` inside a ``cudaProfilerStart/Stop`` range (what ``ncu --profile-from-start
    off`` records), after ``warmup`` calls outside it (compiles, autotuning, allocator warm-up)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def kernel_medians_us(fn: Callable[[], Any], calls: int = 5) -> dict[str, float]:
    """Median device µs per CUDA kernel name over ``calls`` calls of ``fn`` (after one warm-up call),
    by torch.profiler."""
    return {name: statistics.median(ts) for name, ts in kernel_device_us(profiled(fn, calls)).items()}


def measure_copy_bw(n_bytes: int = 1 << 30) -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read plus written."""
    src = torch.empty(n_bytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_cuda(lambda: dst.copy_(src), warmup=3, rep=10)
    return 2 * src.numel() / (ms * 1e-3)  # read + write


def device_record() -> dict[str, Any]:
    """Card, software versions and date for a results file."""
    rec: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        import triton

        rec["triton"] = triton.__version__
    except ImportError:
        rec["triton"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        rec.update(
            device=p.name,
            sm_count=p.multi_processor_count,
            cuda=torch.version.cuda,
            driver_capability=f"{p.major}.{p.minor}",
        )
    else:
        rec["device"] = "cpu"
    return rec


def fmt_row(row: dict[str, Any]) -> str:
    def f(x: Any, spec: str) -> str:
        return format(x, spec) if isinstance(x, (int, float)) else "-"

    return (
        f"{row.get('op', ''):<14} {row.get('shape', ''):<34} {f(row.get('ours_ms'), '9.4f')} "
        f"{f(row.get('base_ms'), '9.4f')} {f(row.get('speedup'), '7.2f')} "
        f"{row.get('achieved', ''):>16} {f(row.get('floor_ms'), '9.4f')}  {row.get('note', '')}"
    )


def print_table(rows: Sequence[dict[str, Any]], title: str = "") -> None:
    """ours/base times in ms; speedup = base / ours (> 1 means we are faster)."""
    if title:
        print(title)
    head = (
        f"{'op':<14} {'shape':<34} {'ours_ms':>9} {'base_ms':>9} {'speedup':>7} {'achieved':>16} "
        f"{'floor_ms':>9}  note"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(fmt_row(r))
