"""GDN prefill kernel profile (device machine): accuracy on plain and ill-conditioned inputs, per-kernel
device time, registers and spills per config.

python scripts/gdn_profile.py OUT.json
"""

from __future__ import annotations

import json
import sys
import traceback

import torch

from deltaserve.bench import op_gdn
from deltaserve.bench.common import kernel_medians_us
from deltaserve.ops.gdn import prefill

CONFIGS = [
    {},  # the default choice
    {"BV": 16},
    {"prep_warps": 8},
]
SHAPES = [("hk16/hv32 1x32768", 16, 32, 32768), ("hk2/hv8 1x32768", 2, 8, 32768)]


def kernel_stats(fns) -> list[dict]:
    """Registers, spills, launch config and shared memory of every compiled specialisation of ``fns``."""
    out = []
    for fn in fns:
        for dev_cache in getattr(fn, "device_caches", {}).values():
            for key, k in dev_cache[0].items():
                out.append(
                    {
                        "kernel": fn.__name__,
                        "n_regs": getattr(k, "n_regs", None),
                        "n_spills": getattr(k, "n_spills", None),
                        "num_warps": getattr(k.metadata, "num_warps", None),
                        "num_stages": getattr(k.metadata, "num_stages", None),
                        "shared": getattr(k.metadata, "shared", None),
                        "key": str(key)[-160:],
                    }
                )
    return out


def single_sequence_case(t: int, hk: int, hv: int, hard: bool = False, seed: int = 3):
    """Inputs for one ``t``-token sequence into slot 1 of an empty fp32 pool, no initial state:
    ``(x, cu_seqlens, pool, slots, has_initial_state)``. ``hard``: keys that share one direction per
    head (|k_i . k_j| near 1) and beta near 1, an ill-conditioned (I + A)."""
    x = op_gdn.make_inputs(t, hk, hv, seed=seed)
    if hard:
        gen = torch.Generator(device="cuda").manual_seed(4)
        base = torch.randn(1, hk, 128, device="cuda", generator=gen)
        x["k"] = (base + 0.2 * torch.randn(t, hk, 128, device="cuda", generator=gen)).bfloat16()
        x["b"] = torch.full_like(x["b"], 3.0)
        x["A_log"] = torch.full_like(x["A_log"], -4.0)
    cu = torch.tensor([0, t], device="cuda", dtype=torch.int32)
    pool = torch.zeros(2, hv, 128, 128, device="cuda")
    sl = torch.tensor([1], device="cuda", dtype=torch.int32)
    hi = torch.tensor([False], device="cuda")
    return x, cu, pool, sl, hi


def reference_errors(x: dict, cu: torch.Tensor, o: torch.Tensor, pool: torch.Tensor) -> dict:
    """Output and final-state (pool slot 1) relative errors against the fp32 chunked reference."""
    from deltaserve.ops.gdn import reference as ref

    g, beta = ref.gdn_gating(x["a"], x["b"], x["A_log"], x["dt_bias"])
    o_r, s_r = ref.chunk_gated_delta_rule_ref(x["q"], x["k"], x["v"], g, beta, cu_seqlens=cu.cpu())

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    return {"o_rel": rel(o.float(), o_r), "state_rel": rel(pool[1], s_r[0])}


def _call(x: dict, cu, pool, sl, hi, cfg: dict) -> torch.Tensor:
    return prefill.gdn_prefill(
        x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], cu_seqlens=cu, state=pool,
        state_slots=sl, has_initial_state=hi, _config=cfg,
    )  # fmt: skip


def _accuracy(cfg: dict, hard: bool, t: int = 4096, hk: int = 16, hv: int = 32) -> dict:
    x, cu, pool, sl, hi = single_sequence_case(t, hk, hv, hard)
    return reference_errors(x, cu, _call(x, cu, pool, sl, hi, cfg), pool)


def main() -> None:
    res: dict = {"rows": [], "accuracy": []}
    for cfg in CONFIGS:
        for hard in (False, True):
            try:
                acc = {"config": cfg, "hard": hard, **_accuracy(cfg, hard)}
            except Exception:
                acc = {"config": cfg, "hard": hard, "error": traceback.format_exc()[-500:]}
            print("accuracy", acc, flush=True)
            res["accuracy"].append(acc)
    for label, hk, hv, t in SHAPES:
        x, cu, pool, sl, hi = single_sequence_case(t, hk, hv, seed=0)
        for cfg in CONFIGS:
            try:

                def run(x=x, cu=cu, pool=pool, sl=sl, hi=hi, cfg=cfg):
                    return _call(x, cu, pool, sl, hi, cfg)

                med = {k: v / 1e3 for k, v in kernel_medians_us(run).items() if "chunk" in k}
                row = {"shape": label, "config": cfg, "kernel_ms": med}
                print(label, cfg, {k: round(v, 4) for k, v in med.items()}, flush=True)
                res["rows"].append(row)
            except Exception:
                traceback.print_exc()
    write_results(res, sys.argv[1])


def write_results(res: dict, path: str) -> None:
    """Add the prefill kernels' compile stats to ``res`` (and print them), then write it as JSON."""
    res["kernels"] = kernel_stats(
        (prefill._chunk_prep_kernel, prefill._chunk_inverse_kernel, prefill._chunk_scan_kernel)
    )
    for k in res["kernels"]:
        print(k, flush=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
