"""Config sweep for the GDN Triton kernels (device machine): prints one line per config, JSON to argv[1].

python scripts/gdn_tune.py OUT.json [prefill|decode|all|graph|mma|order|order2|wide|swap|kvfast|pair]
"""

from __future__ import annotations

import json
import sys
import traceback

import torch

from deltaserve.bench import op_gdn
from deltaserve.bench.common import device_record, measure_copy_bw

PREFILL_CONFIGS = [
    {"BV": 16, "num_warps": 4, "num_stages": 2},
    {"BV": 32, "num_warps": 4, "num_stages": 2},
    {"BV": 32, "num_warps": 8, "num_stages": 2},
    {"BV": 64, "num_warps": 8, "num_stages": 2},
    {"BV": 16, "num_warps": 4, "num_stages": 3},
    {"BV": 32, "num_warps": 4, "num_stages": 3},
    {"BV": 16, "num_warps": 2, "num_stages": 2},
    {"BV": 16, "num_warps": 4, "num_stages": 1},
    {"BV": 16, "num_warps": 4, "num_stages": 2, "prep_warps": 2},
    {"BV": 16, "num_warps": 4, "num_stages": 2, "prep_warps": 8},
]
PREFILL_SHAPES = list(op_gdn.PREFILL_SHAPES)
# 16-bit pools in CUDA graphs: the plain kernel (2 entries) against the tensor-core reduction (a true
# third entry), at bandwidth-bound and at latency-bound batch
MMA_CONFIGS = [(64, 4), (64, 4, 1), (32, 2, 1), (64, 8, 1), (128, 8, 1), (32, 4, 1), (16, 1, 1)]
MMA_B1_CONFIGS = [(16, 1), (16, 1, 1), (32, 1, 1), (32, 2, 1), (64, 4, 1)]


def _both_grids(cfgs: list[tuple]) -> list[tuple]:
    """Each (BV, warps[, mma]) config on the (B*Hv, NV) grid and on V_FAST's 1-D grid (4th entry)."""
    return [c for cfg in cfgs for c in (cfg, (*cfg, *(False,) * (3 - len(cfg)), True))]


BF16, FP32, B3 = torch.bfloat16, torch.float32, (64, 256, 512)
# order: the (B*Hv, NV) grid launches a head's column tiles B*Hv programs apart, V_FAST back to back;
# order2: V_FAST only, more tile shapes; wide: bf16 "kv" whole-row (256-byte) segments per program
GRID_SWEEPS = {
    "order": [
        (BF16, "kv", B3, _both_grids([(64, 4, True), (32, 2, True), (128, 8, True)])),
        (BF16, "vk", B3, _both_grids([(16, 1, True), (64, 4, True)])),
        (FP32, "kv", B3, _both_grids([(64, 4), (32, 2)])),
        (FP32, "vk", B3, _both_grids([(64, 4)])),
    ],
    "order2": [
        (BF16, "kv", B3, [(bv, w, 1, 1) for bv, w in ((16, 1), (16, 2), (32, 1), (32, 4), (64, 2), (64, 8))]),
        (BF16, "kv", B3, [(16, 1, 0, 1), (32, 2, 0, 1), (64, 4, 0, 1)]),
        (
            BF16,
            "vk",
            B3,
            [(16, 2, 1, 1), (32, 1, 1, 1), (32, 2, 1, 1), (32, 4, 1, 1), (16, 1, 0, 1), (32, 2, 0, 1)],
        ),
        (FP32, "kv", B3, [(16, 1, 0, 1), (32, 1, 0, 1), (64, 2, 0, 1), (128, 4, 0, 1)]),
    ],
    "wide": [(BF16, "kv", (64, 256), [(64, 4, 1), (128, 8), (128, 16), (128, 8, 1, 1), (64, 8, 0, 1)])],
    # swap: the MMA kernel with the state tile as the left operand (5th entry): wgmma m64n16 instead of
    # mma.sync m16n8, 80 registers instead of 96 at (64, 4) in the sm_90 compile
    "swap": [
        (
            BF16,
            "kv",
            B3,
            [(64, 4, 1), (64, 4, 1, 0, 1), (64, 8, 1, 0, 1), (128, 8, 1, 0, 1), (32, 4, 1, 0, 1)],
        ),
        (BF16, "vk", B3, [(16, 1, 0, 1), (64, 4, 1, 1, 1), (64, 4, 1, 0, 1)]),
    ],
    # kvfast: bf16 "kv", transposed MMA on the V_FAST grid, with the evict-first state hints
    "kvfast": [
        (
            BF16,
            "kv",
            B3,
            [(64, 4, 1, 1, 1), (64, 4, 1, 0, 1), (64, 8, 1, 1, 1), (128, 8, 1, 1, 1), (128, 4, 1, 1, 1)],
        ),
    ],
    # pair: the MMA kernel with two BV-column tiles of one head per program (6th entry), sharing the
    # loads, norms and gates
    "pair": [
        (
            BF16,
            "kv",
            B3,
            [
                (64, 4, 1, 1, 1),
                (64, 4, 1, 1, 1, 1),
                (64, 4, 1, 0, 1, 1),
                (32, 2, 1, 1, 0, 1),
                (32, 4, 1, 1, 0, 1),
            ],
        ),
    ],
}
GRAPH_CONFIGS = [(32, 1), (32, 2), (64, 2), (64, 4), (128, 4), (16, 2), (16, 4), (128, 8)]
DECODE_CONFIGS = [
    (8, 1),
    (16, 1),
    (32, 1),
    (64, 1),
    (16, 2),
    (32, 2),
    (64, 2),
    (16, 4),
    (32, 4),
    (64, 4),
    (128, 4),
]


def _profile_breakdown(fn) -> dict[str, float]:
    """Per-kernel device time (ms) of one call, via torch.profiler."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out: dict[str, float] = {}
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0.0)
        if t:
            out[ev.key[:60]] = t / 1e3
    return out


def main() -> None:
    path = sys.argv[1]
    what = sys.argv[2] if len(sys.argv) > 2 else "all"
    res: dict = {"device": device_record(), "prefill": [], "decode": [], "breakdown": {}}
    fla_chunk, fla_rec, note = op_gdn._fla()
    print(res["device"], note, flush=True)
    if what in ("prefill", "all"):
        for label, hk, hv, lens, init in PREFILL_SHAPES:
            for i, cfg in enumerate(PREFILL_CONFIGS):
                try:
                    row = op_gdn.bench_prefill(
                        label, hk, hv, lens, init, fla_chunk if i == 0 else None, config=cfg, check=i == 0
                    )
                    print(f"prefill {label:<22} {cfg} ours {row['ours_ms']:.4f} ms base {row['base_ms']} "
                          f"{row.get('note', '')}", flush=True)  # fmt: skip
                    res["prefill"].append(row)
                except Exception:
                    traceback.print_exc()
                torch.cuda.empty_cache()
        # kernel breakdown for the main shape (ours and fla)
        try:
            from deltaserve.ops.gdn.prefill import gdn_prefill

            x = op_gdn.make_inputs(32768, 16, 32)
            cu = torch.tensor([0, 32768], device="cuda", dtype=torch.int32)
            pool = torch.zeros(2, 32, 128, 128, device="cuda")
            sl = torch.tensor([1], device="cuda", dtype=torch.int32)
            hi = torch.tensor([False], device="cuda")
            res["breakdown"]["ours"] = _profile_breakdown(
                lambda: gdn_prefill(
                    x["q"],
                    x["k"],
                    x["v"],
                    x["a"],
                    x["b"],
                    x["A_log"],
                    x["dt_bias"],
                    cu_seqlens=cu,
                    state=pool,
                    state_slots=sl,
                    has_initial_state=hi,
                )  # fmt: skip
            )
            if fla_chunk is not None:
                qc, kc, vc = (x[n].contiguous()[None] for n in ("q", "k", "v"))
                ac, bc = x["a"].contiguous()[None], x["b"].contiguous()[None]
                res["breakdown"]["fla"] = _profile_breakdown(
                    lambda: fla_chunk(
                        qc,
                        kc,
                        vc,
                        g=ac,
                        beta=bc,
                        A_log=x["A_log"],
                        dt_bias=x["dt_bias"],
                        use_gate_in_kernel=True,
                        use_beta_sigmoid_in_kernel=True,
                        use_qk_l2norm_in_kernel=True,
                        output_final_state=True,
                        cu_seqlens=cu.long(),
                        cu_seqlens_cpu=cu.long().cpu(),
                    )  # fmt: skip
                )
            print(json.dumps(res["breakdown"], indent=1), flush=True)
        except Exception:
            traceback.print_exc()
    if what in ("decode", "all"):
        bw = measure_copy_bw()
        print(f"copy bw {bw / 1e9:.0f} GB/s", flush=True)
        for sdt in (torch.float32, torch.bfloat16):
            for layout in ("kv", "vk"):
                for nb, graph in ((1, True), (256, False)):
                    for cfg in DECODE_CONFIGS:
                        try:
                            row = op_gdn.bench_decode(nb, sdt, layout, None, graph, bw, config=cfg)
                            print(f"decode {row['shape']:<28} {cfg} {row['ours_ms'] * 1e3:8.2f} us "
                                  f"{row['achieved']}", flush=True)  # fmt: skip
                            res["decode"].append(row)
                        except Exception:
                            traceback.print_exc()
                        torch.cuda.empty_cache()
    if what == "graph":
        # decode in CUDA graphs (eager timings include the Python launch and are too noisy to rank)
        bw = measure_copy_bw()
        print(f"copy bw {bw / 1e9:.0f} GB/s", flush=True)
        cases = [(256, sdt, lay) for sdt in (torch.float32, torch.bfloat16) for lay in ("kv", "vk")]
        cases += [(1, torch.float32, "kv"), (1, torch.float32, "vk"), (1, torch.bfloat16, "kv")]
        for nb, sdt, layout in cases:
            cfgs = GRAPH_CONFIGS if nb > 1 else [(16, 1), (16, 2), (16, 4), (32, 1)]
            for cfg in cfgs:
                _graph_row(nb, sdt, layout, bw, cfg, res)
        for cfg in ({"prep_warps": 2}, {"prep_warps": 4}):
            row = op_gdn.bench_prefill(
                "hk16/hv32 1x32768", 16, 32, [32768], False, None, config=cfg, check=False
            )
            print(f"prefill {cfg} {row['ours_ms']:.4f} ms", flush=True)
            res["prefill"].append(row)
    if what == "mma":
        bw = measure_copy_bw()
        print(f"copy bw {bw / 1e9:.0f} GB/s", flush=True)
        for layout in ("kv", "vk"):
            for nb in (256, 64, 512):
                for cfg in MMA_CONFIGS:
                    _graph_row(nb, torch.bfloat16, layout, bw, cfg, res)
            for cfg in MMA_B1_CONFIGS:
                _graph_row(1, torch.bfloat16, layout, bw, cfg, res)
    if what in GRID_SWEEPS:
        # decode grid order and tile shapes in CUDA graphs (BENCHMARKS.md, 2026-11-28 ~17:10 UTC)
        bw = measure_copy_bw()
        print(f"copy bw {bw / 1e9:.0f} GB/s", flush=True)
        for sdt, layout, batches, cfgs in GRID_SWEEPS[what]:
            for nb in batches:
                for cfg in cfgs:
                    _graph_row(nb, sdt, layout, bw, cfg, res)
    with open(path, "w") as f:
        json.dump(res, f, indent=1, default=str)


def _graph_row(nb: int, sdt: torch.dtype, layout: str, bw: float, cfg: tuple, res: dict) -> None:
    """One decode timing in CUDA graphs, printed and kept in `res` (the traceback printed if it failed)."""
    try:
        row = op_gdn.bench_decode(nb, sdt, layout, None, True, bw, config=cfg)
    except Exception:
        traceback.print_exc()
        return
    finally:
        torch.cuda.empty_cache()
    print(
        f"graph {row['shape']:<28} {str(cfg):<14} {row['ours_ms'] * 1e3:8.2f} us {row['achieved']}",
        flush=True,
    )
    res["decode"].append(row)


if __name__ == "__main__":
    main()
