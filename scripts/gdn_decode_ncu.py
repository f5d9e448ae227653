"""ncu target: one GDN decode launch on a bf16 "kv" pool, or the same bytes through torch's ``x * 1``.

    ncu --profile-from-start off ... python3 scripts/gdn_decode_ncu.py {ours|ours32|mul}:B

(``ours32``: an fp32 pool, for comparison).

Hk=16, Hv=32, D=128 (Qwen3-Next). Inputs are made and the kernel compiled and warmed before
``cudaProfilerStart``; the case then runs once inside the profiled range.
"""

from __future__ import annotations

import sys

import torch

from deltaserve.bench import op_gdn
from deltaserve.bench.common import ncu_range
from deltaserve.ops.gdn.decode import gdn_decode


def main() -> None:
    kind, nb = sys.argv[1].split(":")
    nb = int(nb)
    hk, hv, d = 16, 32, 128
    x = op_gdn.make_inputs(nb, hk, hv)
    sdt = torch.float32 if kind == "ours32" else torch.bfloat16
    pool = (torch.randn(nb + 1, hv, d, d, device="cuda") * 0.1).to(sdt)
    slots = torch.arange(1, nb + 1, device="cuda", dtype=torch.int32)
    dst = torch.empty_like(pool[1:])
    if kind.startswith("ours"):
        fn = lambda: gdn_decode(  # noqa: E731
            x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], state=pool, state_slots=slots
        )
    else:
        fn = lambda: torch.mul(pool[1:], 1, out=dst)  # noqa: E731
    ncu_range(fn)


if __name__ == "__main__":
    main()
