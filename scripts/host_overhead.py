"""Host (Python) time of one GDN prefill call, phase by phase (device machine).

python scripts/host_overhead.py

Each phase is timed with perf_counter over 50 calls (median, µs): argument checks, the allocations
before the launches, each Triton launch, and the whole call. Host time spent
before the first kernel starts shows up in event-timed benchmarks as idle GPU time.
"""

from __future__ import annotations

import torch

from deltaserve.bench import op_gdn
from deltaserve.bench.common import host_us
from deltaserve.ops.gdn import checks, prefill


def main() -> None:
    t, hk, hv = 32768, 16, 32
    x = op_gdn.make_inputs(t, hk, hv)
    cu = torch.tensor([0, t], device="cuda", dtype=torch.int32)
    pool = torch.zeros(2, hv, 128, 128, device="cuda")
    sl = torch.tensor([1], device="cuda", dtype=torch.int32)
    hi = torch.tensor([False], device="cuda")
    args = (x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"])
    kw = dict(cu_seqlens=cu, state=pool, state_slots=sl, has_initial_state=hi)

    def whole():
        prefill.gdn_prefill(*args, **kw)

    def check():
        checks.check_prefill(*args, cu, pool, sl, hi, "kv")

    def allocations():  # the call's five output / scratch buffers
        for shape, dt in (
            ((t, hv, 128), torch.bfloat16),
            ((t // 64 + 1, hv, 64), torch.float32),
            ((t, hk, 128), torch.float16),
            ((t, hk, 128), torch.float16),
            ((t // 64 + 1, hv, 2, 64, 64), torch.float16),
        ):
            torch.empty(*shape, dtype=dt, device="cuda")

    def empty_call():  # the sleep kernel's own launch, for scale
        torch.cuda._sleep(10)

    whole()
    rows = {
        "whole gdn_prefill call": host_us(whole),
        "checks.check_prefill": host_us(check),
        "allocations": host_us(allocations),
        "one trivial kernel launch": host_us(empty_call),
    }
    for k, v in rows.items():
        print(f"{v:9.1f} us  {k}", flush=True)


if __name__ == "__main__":
    main()
