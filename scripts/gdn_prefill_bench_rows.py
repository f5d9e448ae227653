"""``bench.ops gdn``'s prefill rows only (device machine), one line each, JSON to argv[1]:
python scripts/gdn_prefill_bench_rows.py OUT.json"""

from __future__ import annotations

import json
import sys

import torch

from deltaserve.bench import op_gdn
from deltaserve.bench.common import device_record


def main() -> None:
    fla_chunk, _, note = op_gdn._fla()
    res = {"device": device_record(), "fla": note, "rows": []}
    for label, hk, hv, lens, init in op_gdn.PREFILL_SHAPES:
        row = op_gdn.bench_prefill(label, hk, hv, lens, init, fla_chunk)
        print(label, "| host", round(row["ours_ms"], 4), "vs", row["base_ms"] and round(row["base_ms"], 4),
              "|", row["note"], flush=True)  # fmt: skip
        res["rows"].append(row)
        torch.cuda.empty_cache()
    with open(sys.argv[1], "w") as f:
        json.dump(res, f, indent=1, default=str)


if __name__ == "__main__":
    main()
