"""GDN decode, bf16 "kv" pools (the MMA kernel): its state tile's L2 prefetch before the PDL wait on and
off (``decode.MMA_PREFETCH``), same process, interleaved rounds, CUDA graphs of several layers' calls
(``bench.op_gdn.bench_decode``), % of the copy bandwidth measured in the same run. The outputs and
states of both settings are compared first (the hint must not change a bit).

    python3 scripts/gdn_decode_prefetch.py OUT.json
"""

from __future__ import annotations

import json
import statistics
import sys

import torch

from deltaserve.bench.common import device_record, measure_copy_bw
from deltaserve.bench.op_gdn import bench_decode, make_inputs
from deltaserve.ops.gdn import decode

BATCHES = (64, 128, 256, 512)


def same_bits() -> bool:
    """Both settings give bit-identical outputs and states at B=64 (the kernels differ only in hints)."""
    x = make_inputs(64, 16, 32)
    pool0 = torch.randn(65, 32, 128, 128, device="cuda").to(torch.bfloat16) * 0.1
    slots = torch.arange(1, 65, device="cuda", dtype=torch.int32)
    outs = []
    for on in (False, True):
        decode.MMA_PREFETCH = on
        pool = pool0.clone()
        o = decode.gdn_decode(
            x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], state=pool, state_slots=slots
        )
        outs.append((o, pool))
    return torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def main() -> None:
    copy_bw = measure_copy_bw()
    rows = []
    try:
        identical = same_bits()
        for _ in range(3):
            for on in (False, True):
                decode.MMA_PREFETCH = on
                for nb in BATCHES:
                    r = bench_decode(nb, torch.bfloat16, "kv", None, True, copy_bw)
                    rows.append(
                        dict(
                            prefetch=on,
                            B=nb,
                            us=r["ours_ms"] * 1e3,
                            achieved=r["achieved"],
                            note=r.get("note"),
                        )
                    )
    finally:
        decode.MMA_PREFETCH = True
    with open(sys.argv[1], "w") as f:
        json.dump(dict(device=device_record(), copy_bw=copy_bw, identical=identical, rows=rows), f, indent=1)
    print(f"copy {copy_bw / 1e9:.0f} GB/s; outputs and states identical: {identical}")
    for on in (False, True):
        for nb in BATCHES:
            us = [r["us"] for r in rows if r["prefetch"] == on and r["B"] == nb]
            pct = [r["achieved"].split()[-1] for r in rows if r["prefetch"] == on and r["B"] == nb]
            print(f"prefetch={on!s:5} B={nb:3}: median {statistics.median(us):.1f} us {us} {pct}")


if __name__ == "__main__":
    main()
