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


def main() -> None:
    cfgs = [None] + [ast.literal_eval(c) for c in sys.argv[2:]]
    bw = measure_copy_bw()
    rows: list = [device_record(), {"copy_bw_GBps": bw / 1e9}]
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
