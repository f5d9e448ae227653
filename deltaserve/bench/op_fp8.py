"""Benchmark: block-FP8 GEMM (Triton) vs bf16 ``torch.matmul`` and ``torch._scaled_mm``, same process.

    python -m deltaserve.bench.ops fp8 [--quick] [--json PATH]

Weights e4m3 with 128x128 scales, activations bf16. Ours: ``ops.fp8.block_fp8_linear`` W8A8
(``quantize_activation=True``: per-token-group quant + fp8 MMA, timed together; at M = 1, and M = 2
below N 8192, a quant kernel then the streaming GEMV, for other M up to 16 the quant is inline), W8A16
(M <= 16: fp8 weight widened in registers; large M: dequantised + cuBLAS), both on the plain row map
(``row_block=None``), and W8A8 through an explicit row map ("rowmap"). Baselines: bf16 ``x @ Wᵀ``
(cuBLAS) and ``torch._scaled_mm`` with per-tensor scales (the fp8 cuBLAS ceiling, not block-scaled; its
input quantisation is not timed). Shapes: Qwen3-Next ``in_proj_qkvz`` (N 12288, K 2048) and
``out_proj`` (N 2048, K 4096) at decode M 1, 2, 16 and prefill M 2048-8192. Small M: CUDA-graph
replays over 8 weight copies (no L2 reuse); large M: CUDA-graph replays of one call (device time; the
eager Python cost per call is in the note as host µs). ``achieved`` = TFLOP/s (large M)
or weight-read bandwidth as % of the fp8 weight-bytes floor (small M); speedup = bf16 / ours.
"""

from __future__ import annotations

from typing import Any

import torch

from deltaserve.bench.common import bytes_floor_ms, fmt_row, host_us, time_cuda_graph

DESCRIPTION = "block-FP8 GEMM (W8A8 and W8A16) vs bf16 matmul and _scaled_mm"
SHAPES = [(12288, 2048), (2048, 4096)]
DT = torch.bfloat16


def _weights(n: int, k: int, copies: int):
    from deltaserve.ops.fp8.reference import quantize_block_fp8

    out = []
    for _ in range(copies):
        w = torch.randn(n, k, device="cuda", dtype=DT) * 0.02
        q, s = quantize_block_fp8(w)
        out.append((w, q, s))
    return out, torch.arange(n, device="cuda") // 128


def _time(fns) -> float:
    """Per-call device ms inside a CUDA graph: the GEMM's own rate, without the Python in front of the
    launch (which `host_us` reports separately; eager callers pay it unless it overlaps earlier work)."""
    return time_cuda_graph(fns)


def _rows(m: int, n: int, k: int) -> list[dict[str, Any]]:
    from deltaserve.ops.fp8 import block_fp8_linear

    small = m <= 16
    copies = 8 if small else 1
    ws, rb = _weights(n, k, copies)
    x = torch.randn(m, k, device="cuda", dtype=DT)
    t_bf16 = _time([(lambda w=w: x @ w.T) for w, _, _ in ws])
    t: dict[str, float] = {}
    hosts: dict[str, float] = {}
    # plain weights: row_block None (one scale per 128-row tile, the layers' path for plain row maps);
    # "rowmap": the same weights through the general per-column scale gather (merged / permuted rows)
    for name, qa, rows in (("w8a8", True, None), ("w8a16", False, None), ("w8a8_rowmap", True, rb)):
        fns = [
            (lambda q=q, s=s, qa=qa, rows=rows: block_fp8_linear(x, q, s, rows, quantize_activation=qa))
            for _, q, s in ws
        ]
        t[name] = _time(fns)
        hosts[name] = host_us(fns[0], reps=20)
    t_sc = None
    try:
        xq = x.to(torch.float8_e4m3fn)
        one = torch.ones((), device="cuda")
        t_sc = _time([(lambda q=q: torch._scaled_mm(xq, q.T, one, one, out_dtype=DT)) for _, q, _ in ws])
    except Exception:  # noqa: BLE001 - a torch build without fp8 cuBLAS: leave the column empty
        t_sc = None
    flops = 2 * m * n * k
    floor = bytes_floor_ms(n * k + 2 * m * (n + k))
    rows = []
    for name, ms in t.items():
        tf = flops / (ms * 1e-3) / 1e12
        tf_bf16 = flops / (t_bf16 * 1e-3) / 1e12
        achieved = f"{100 * floor / ms:.0f}% fp8 floor" if small else f"{tf:.0f} TF/s"
        note = f"bf16 {tf_bf16:.0f} TF/s; ratio {t_bf16 / ms:.2f}x"
        if t_sc is not None:
            note += f"; _scaled_mm(per-tensor) {t_sc * 1e3:.1f}us {flops / (t_sc * 1e-3) / 1e12:.0f} TF/s"
        rows.append(
            dict(
                op=f"fp8_{name}",
                shape=f"M={m} N={n} K={k}",
                ours_ms=ms,
                base_ms=t_bf16,
                base="bf16 torch.matmul",
                speedup=t_bf16 / ms,
                achieved=achieved,
                floor_ms=floor,
                note=note + ("; graph x8" if small else f"; graph; host {hosts[name]:.0f} us/call eager"),
            )
        )
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    ms = (1, 2, 16, 2048, 8192) if quick else (1, 2, 16, 2048, 4096, 8192)
    for n, k in SHAPES:
        for m in ms:
            rows += _rows(m, n, k)
    return rows


def sweep() -> list[dict[str, Any]]:
    """Times launch configs: M=16 W8A8 (small-M kernel tiles, both forms) and M=4096 W8A8 (TMA tile
    configs for N >= 8192 and below)."""
    from deltaserve.ops.fp8 import kernels

    rows = []

    def row(m: int, n: int, k: int, note: str) -> None:
        try:
            r = _rows(m, n, k)[0]  # W8A8, plain rows
            r["note"] = note + "; " + r["note"]
        except Exception as exc:  # noqa: BLE001 - a config that does not compile is a row
            r = dict(op="fp8", shape=f"M={m} N={n} K={k}", note=f"{note}: {exc}"[:200])
        rows.append(r)
        print(fmt_row(r), flush=True)

    with kernels.config_restored():
        for swap in (False, True):
            for bn, warps, stages in [(64, 4, 3), (64, 4, 4), (128, 4, 3), (128, 8, 3)]:
                for target in (132, 264):
                    for pdl in (0, 2):
                        tile = kernels.SmallTile(swap, bn, warps, stages, target, pdl)
                        kernels.CONFIG.update(small_w8a8=((0, tile),))
                        for n, k in SHAPES:
                            row(16, n, k, f"small={tile}")
    with kernels.config_restored():
        for cfg in [(64, 128, 4, 4), (128, 128, 8, 3), (128, 128, 8, 4), (64, 128, 4, 5)]:
            kernels.CONFIG.update(tma_wide=cfg, tma_narrow=cfg)
            for n, k in SHAPES:
                row(4096, n, k, f"tma={cfg}")
    return rows


if __name__ == "__main__":
    from deltaserve.bench.common import print_table

    print_table(run(), title="fp8")
