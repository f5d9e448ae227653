"""bf16 "kv" GDN decode in CUDA graphs at the default config and at given configs, B = 64 / 128 / 256 / 512
(device machine): one line per row, JSON to argv[1].

python scripts/gdn_decode_rows.py OUT.json [CONFIG ...]   (CONFIG as a Python tuple, e.g. "(64,4,1,1,1)")
"""

from __future__ import annotations

import ast
import json
import sys

import torch

from deltaserve.bench import op_gdn
from deltaserve.bench.common import device_record, measure_copy_bw


def _check(cfg: tuple) -> dict:
    """A config against the default one on 5 sequences with a padding slot: outputs, states, untouched slots."""
    from deltaserve.ops.gdn.decode import gdn_decode

    x = op_gdn.make_inputs(5, 16, 32, seed=3)
    pool = (torch.randn(7, 32, op_gdn.D, op_gdn.D, device="cuda") * 0.1).to(torch.bfloat16)
    slots = torch.tensor([1, 2, -1, 4, 3], device="cuda", dtype=torch.int32)
    args = (x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"])
    ref, mine = pool.clone(), pool.clone()
    o_ref = gdn_decode(*args, state=ref, state_slots=slots)
    o = gdn_decode(*args, state=mine, state_slots=slots, _config=cfg)
    return {
        "o_max_diff": (o.float() - o_ref.float()).abs().max().item(),
        "state_max_diff": (mine.float() - ref.float()).abs().max().item(),
        "untouched": bool(torch.equal(mine[[0, 5, 6]], pool[[0, 5, 6]])),
        "padding_zero": bool((o[2] == 0).all()),
    }


def main() -> None:
    cfgs = [None] + [ast.literal_eval(c) for c in sys.argv[2:]]
    bw = measure_copy_bw()
    rows: list = [device_record(), {"copy_bw_GBps": bw / 1e9}]
    for cfg in cfgs[1:]:
        rows.append({"config": cfg, "check_vs_default": _check(cfg)})
        print(cfg, rows[-1]["check_vs_default"], flush=True)
    print(f"copy bw {bw / 1e9:.0f} GB/s", flush=True)
    for nb in (64, 128, 256, 512):
        for cfg in cfgs:
            r = op_gdn.bench_decode(nb, torch.bfloat16, "kv", None, True, bw, config=cfg)
            rows.append(r)
            print(f"B={nb} {str(cfg or 'default'):<24} {r['ours_ms'] * 1e3:8.2f} us {r['achieved']} {r.get('note', '')}",
                  flush=True)  # fmt: skip
            torch.cuda.empty_cache()
    with open(sys.argv[1], "w") as f:
        json.dump(rows, f, indent=1, default=str)


if __name__ == "__main__":
    main()
