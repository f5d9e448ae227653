"""Benchmark: block-FP8 GEMM (Triton) vs bf16 ``torch.matmul`` and ``torch._scaled_mm``, same process.

    python -m deltaserve.bench.ops fp8 [--quick] [--json PATH]

Weights e4m3 with 128x128 scales, activations bf16. Ours: ``ops.fp8.block_fp8_linear`` W8A8
(``quantize_activation=True``: per-token-group quant + fp8 MMA; for M <= 16 the quant is inline)
and W8A16 (fp8 weight widened in registers, bf16 MMA). Baselines: bf16 ``x @ Wᵀ`` (cuBLAS) and
``torch._scaled_mm`` with per-tensor scales (the fp8 cuBLAS ceiling, not block-scaled; its input
quantisation is not timed). Shapes: Qwen3-Next ``in_proj_qkvz`` (N 12288, K 2048) and
``out_proj`` (N 2048, K 4096) at decode M 1, 16 and prefill M 2048-8192. Small M: CUDA-graph
replays over 8 weight copies (no L2 reuse); large M: CUDA events. ``achieved`` = TFLOP/s (large M)
or weight-read bandwidth as % of the fp8 weight-bytes floor (small M); speedup = bf16 / ours.
"""

from __future__ import annotations

from typing import Any

import torch

from deltaserve.bench.common import bytes_floor_ms, fmt_row, time_cuda, time_cuda_graph

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


def _time(fns, graph: bool) -> float:
    return time_cuda_graph(fns) if graph else time_cuda(fns[0])


def _rows(m: int, n: int, k: int) -> list[dict[str, Any]]:
    from deltaserve.ops.fp8 import block_fp8_linear

    small = m <= 16
    copies = 8 if small else 1
    ws, rb = _weights(n, k, copies)
    x = torch.randn(m, k, device="cuda", dtype=DT)
    t_bf16 = _time([(lambda w=w: x @ w.T) for w, _, _ in ws], small)
    t = {}
    for name, qa in (("w8a8", True), ("w8a16", False)):
        t[name] = _time(
            [
                (lambda q=q, s=s, qa=qa: block_fp8_linear(x, q, s, rb, quantize_activation=qa))
                for _, q, s in ws
            ],
            small,
        )
    t_sc = None
    try:
        xq = x.to(torch.float8_e4m3fn)
        one = torch.ones((), device="cuda")
        t_sc = _time(
            [(lambda q=q: torch._scaled_mm(xq, q.T, one, one, out_dtype=DT)) for _, q, _ in ws], small
        )
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
                note=note + ("; graph x8" if small else ""),
            )
        )
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    ms = (1, 16, 2048, 8192) if quick else (1, 16, 2048, 4096, 8192)
    for n, k in SHAPES:
        for m in ms:
            rows += _rows(m, n, k)
    return rows


def sweep() -> list[dict[str, Any]]:
    """Times launch configs of the GEMM: M=1 (W8A16, small-M configs x split targets), M=4096 (W8A8)."""
    from deltaserve.ops.fp8 import kernels

    saved = dict(kernels.CONFIG)
    rows = []
    try:
        small = [(16, 64, 4, 4), (16, 32, 4, 6), (16, 64, 4, 6), (16, 64, 4, 8), (16, 128, 4, 4)]
        small += [(16, 128, 8, 4), (16, 32, 2, 8), (16, 256, 8, 3)]
        for cfg in small:
            for tp in (132, 264, 528, 1056):
                for n, k in SHAPES:
                    kernels.CONFIG.update(small=cfg, target_programs=tp)
                    try:
                        r = _rows(1, n, k)[1]  # W8A16
                        r["note"] = f"small={cfg} target={tp}; " + r["note"]
                    except Exception as exc:  # noqa: BLE001 - a config that does not compile is a row
                        r = dict(op="fp8", shape=f"M=1 N={n} K={k}", note=f"small={cfg}: {exc}"[:200])
                    rows.append(r)
                    print(fmt_row(r), flush=True)
        kernels.CONFIG.update(saved)
        for cfg in [(128, 128, 8, 4), (128, 256, 8, 3), (256, 128, 8, 3)]:
            kernels.CONFIG.update(large=cfg)
            try:
                for r in _rows(4096, 12288, 2048)[:1]:
                    r["note"] = f"large={cfg}"
                    rows.append(r)
                    print(fmt_row(r), flush=True)
            except Exception as exc:  # noqa: BLE001
                rows.append(dict(op="fp8", shape="M=4096", note=f"large={cfg}: {exc}"[:200]))
    finally:
        kernels.CONFIG.clear()
        kernels.CONFIG.update(saved)
    return rows


if __name__ == "__main__":
    from deltaserve.bench.common import print_table

    print_table(run(), title="fp8")
