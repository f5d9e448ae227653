"""Probe: small-M block-FP8 GEMM, swap-AB kernel with the weight streamed by TMA, over tile height,
pipeline depth and split-K target, against the shipped kernel and bf16 cuBLAS (one GPU run).

    python3 scripts/fp8_small_sweep.py OUT.json [tma|ship|inplace|narrow]

ncu (2026-11-28, H200) showed the shipped small-M kernel at M=16 with 0.4-0.6 waves of 4-warp programs
and 16 % achieved occupancy, 1.5 TB/s from DRAM, while cuBLAS's bf16 kernel runs 96 one-per-SM CTAs with
~220 KB of shared-memory pipeline at 3.1 TB/s. This sweeps the swap-AB variant in ``fp8_probe.py``
(``small_swap``: TMA weight tiles, inline activation quant for W8A8) towards that shape. Every variant's
output is checked against the shipped kernel before it is timed (8-call CUDA graphs, 8 weight copies).
TMA and deeper pipelines gained nothing (BENCHMARKS.md, 2026-11-28 ~15:20 UTC).

``ship``: the shipped kernel (``block_fp8_linear``) over ``CONFIG["small"]`` tiles and split targets at
M = 2-16, W8A16 and W8A8, against bf16 cuBLAS. (Its first run also tried W8A8 with the e4m3 activations
dequantised to bf16 for an in-place bf16 MMA: 17.6-18.0 us against 12.3-12.7, dropped.)
"""

# ruff: noqa: B023

from __future__ import annotations

import json
import sys

import torch
from fp8_gemv_probe import swap_ab_tiers
from fp8_probe import _rel, _weights, small_swap

from deltaserve.bench.common import device_record, time_cuda_graph
from deltaserve.ops.fp8 import kernels as K


def _measure(rows: list, r: dict, fns: list, ref: torch.Tensor, t_bf16: float) -> None:
    """Checks ``fns[0]()`` against ``ref``, times all of ``fns`` in one CUDA graph and appends ``r``
    (or the error: a config that does not fit is a row, not a crash)."""
    try:
        r["rel_err"] = _rel(fns[0](), ref)
        t = time_cuda_graph(fns) * 1e3
        r.update(us=round(t, 2), vs_bf16=round(t_bf16 / t, 3))
    except Exception as exc:  # noqa: BLE001
        r["error"] = str(exc)[:200]
    rows.append(r)
    print(json.dumps(r), flush=True)


def ship(rows: list, narrow: bool = False) -> None:
    """The shipped kernel over tiles and split targets; ``narrow``: M=16 only, with weight tiles under 64
    rows (1-2 warps, so mma.sync instead of wgmma) and more programs per SM."""
    cfgs = [
        ((16, bn, w, st), tp)
        for bn, w in ((64, 4), (128, 4), (128, 8))
        for st in (3, 4, 6)
        for tp in (132, 264, 396)
    ]
    if narrow:
        cfgs = [((16, 64, 4, 3), 264)] + [  # the swap-AB tile shipped until 2026-11-29
            ((16, bn, w, st), tp)
            for bn, w in ((16, 1), (32, 1), (32, 2), (64, 2))
            for st in (3, 5)
            for tp in (264, 528)
        ]
    with K.config_restored() as saved:
        for n, k in ((12288, 2048), (2048, 4096)):
            ws, _ = _weights(n, k, 8)
            for m in (16,) if narrow else (16, 8, 2):
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                t_bf16 = time_cuda_graph([(lambda w=w: x @ w.T) for w, _, _ in ws]) * 1e3
                for w8a8 in (False, True):
                    K.CONFIG.update(saved)
                    ref = K.block_fp8_linear(x, ws[0][1], ws[0][2], None, quantize_activation=w8a8)
                    for cfg, tp in cfgs if m == 16 else cfgs[:9]:
                        K.CONFIG.update(swap_ab_tiers(cfg, tp))
                        r = dict(
                            shape=f"M={m} N={n} K={k}",
                            w8a8=w8a8,
                            bf16_us=round(t_bf16, 2),
                            cfg=cfg,
                            target=tp,
                        )
                        fns = [
                            (lambda q=q, s=s: K.block_fp8_linear(x, q, s, None, quantize_activation=w8a8))
                            for _, q, s in ws
                        ]
                        _measure(rows, r, fns, ref, t_bf16)
            del ws
            torch.cuda.empty_cache()


def inplace(rows: list) -> None:
    """W8A16 at M=16: the in-place-accumulating swap-AB probe, weight by TMA or plain loads, 1 or 2 scale
    blocks per loop step, over tiles, stages and split targets; prints the best per shape last."""
    cfgs = [
        (tma, kstep, (bn, w, st, tgt))
        for tma in (True, False)
        for kstep in (1, 2)
        for bn, w in ((64, 4), (128, 4), (128, 8))
        for st in (3, 5)
        for tgt in (264, 396)
    ]
    best = []
    for n, k in ((12288, 2048), (2048, 4096)):
        ws, rb = _weights(n, k, 8)
        x = torch.randn(16, k, device="cuda", dtype=torch.bfloat16)
        t_bf16 = time_cuda_graph([(lambda w=w: x @ w.T) for w, _, _ in ws]) * 1e3
        ref = K.block_fp8_linear(x, ws[0][1], ws[0][2], None)
        t_ship = (
            time_cuda_graph([(lambda q=q, s=s: K.block_fp8_linear(x, q, s, None)) for _, q, s in ws]) * 1e3
        )
        base = dict(shape=f"M=16 N={n} K={k}", bf16_us=round(t_bf16, 2), ship_us=round(t_ship, 2))
        print(json.dumps(base), flush=True)
        start = len(rows)
        for tma, kstep, cfg in cfgs:
            r = dict(base, tma=tma, kstep=kstep, cfg=cfg)
            fns = [
                (
                    lambda q=q, s=s: small_swap(
                        x, q, s, rb, cfg, tma=tma, w8a8=False, uniform=True, kstep=kstep
                    )
                )
                for _, q, s in ws
            ]
            _measure(rows, r, fns, ref, t_bf16)
        ok = [r for r in rows[start:] if "us" in r]
        best += sorted(ok, key=lambda r: r["us"])[:4]
        del ws
        torch.cuda.empty_cache()
    print("BEST")
    for r in best:
        print(json.dumps(r))


def main() -> None:
    rows: list = [dict(kind="device", **device_record())]
    mode = {"inplace": inplace, "ship": ship, "narrow": lambda rows: ship(rows, narrow=True)}.get(
        sys.argv[2] if len(sys.argv) > 2 else ""
    )
    if mode is not None:
        try:
            mode(rows)
        finally:
            with open(sys.argv[1], "w") as f:
                json.dump(rows, f, indent=1)
        return
    cfgs = [(bn, 4, st, tgt) for bn in (64, 128) for st in (4, 6, 8) for tgt in (0, 132, 264)] + [
        (128, 8, 4, 0),
        (128, 8, 6, 0),
        (256, 8, 4, 0),
        (256, 8, 3, 132),
    ]
    try:
        for n, k in ((12288, 2048), (2048, 4096)):
            ws, rb = _weights(n, k, 8)
            for m in (16, 1):
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                t_bf16 = time_cuda_graph([(lambda w=w: x @ w.T) for w, _, _ in ws]) * 1e3
                for w8a8 in (True, False):
                    ref = K.block_fp8_linear(x, ws[0][1], ws[0][2], None, quantize_activation=w8a8)
                    t_ship = (
                        time_cuda_graph(
                            [
                                (lambda q=q, s=s: K.block_fp8_linear(x, q, s, None, quantize_activation=w8a8))
                                for _, q, s in ws
                            ]
                        )
                        * 1e3
                    )
                    base = dict(
                        shape=f"M={m} N={n} K={k}",
                        w8a8=w8a8,
                        bf16_us=round(t_bf16, 2),
                        ship_us=round(t_ship, 2),
                    )
                    print(json.dumps(base), flush=True)
                    for cfg in cfgs if m == 16 else cfgs[:9]:
                        r = dict(base, cfg=cfg)
                        fns = [
                            (lambda q=q, s=s: small_swap(x, q, s, rb, cfg, tma=True, w8a8=w8a8, uniform=True))
                            for _, q, s in ws
                        ]
                        _measure(rows, r, fns, ref, t_bf16)
            del ws
            torch.cuda.empty_cache()
    finally:
        with open(sys.argv[1], "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
