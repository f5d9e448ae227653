"""Benchmark: RMSNorm kernels (Triton) vs plain torch in the same process.

    python -m deltaserve.bench.ops norm [--quick] [--json PATH]

- ``add_rms_norm`` (zero-centred, residual add fused): hidden 2048 (Qwen3-Next-80B) and 5120,
  decode batch 256 and 8192-token prefill; bytes = x + residual read, out + new residual written.
- ``gated_rms_norm``: GDN output norm per value head, [T, 32, 128] with a strided z (a slice of the
  projection output); bytes = x + z read, out written.
- ``add_rms_norm_fp8``: fused add + RMSNorm emitting the FP8 GEMM's activations (e4m3 + per-token
  128-group scales), H 2048; bytes = x + residual read, new residual + e4m3 out + scales written.
  Two baselines: the torch reference (norm then quant) and our two launches (norm kernel, then the
  fp8 quant kernel), which also move the bf16 output through memory.
Baseline = the fp32 torch reference (``ops/norm/reference.py``) on the GPU: the unfused torch ops.
Floor = bytes / 3.0 TB/s. Timing: CUDA-graph replay of several calls, ours and baseline alike (host
launch cost excluded; eager calls of these wrappers cost about 0.1 ms of host time each).
"""

from __future__ import annotations

from typing import Any

import torch

from deltaserve.bench.common import time_cuda_graph
from deltaserve.bench.op_conv1d import bandwidth_row, copy_rows, gpu_ms

DESCRIPTION = "fused add + zero-centred RMSNorm (bf16 or fp8 out) and gated RMSNorm"
DT = torch.bfloat16


def _add_rows(t: int, h: int) -> list[dict[str, Any]]:
    from deltaserve.ops.norm import add_rms_norm, reference

    w = torch.randn(h, device="cuda", dtype=DT) * 0.1
    n = 8 if t <= 256 else 2  # distinct buffers per graph (8 layers of a decode step)
    bufs = [
        (torch.randn(t, h, device="cuda", dtype=DT), torch.randn(t, h, device="cuda", dtype=DT))
        for _ in range(n)
    ]
    t_ours = time_cuda_graph([(lambda a=a, c=c: add_rms_norm(a, c, w, 1e-6)) for a, c in bufs])
    t_base = time_cuda_graph([(lambda a=a, c=c: reference.add_rms_norm(a, c, w, 1e-6)) for a, c in bufs])
    n_bytes = 4 * t * h * 2 + h * 2
    rows = [
        bandwidth_row(
            "add_rms_norm", f"T={t} H={h}", t_ours, t_base, "torch reference", n_bytes, "cuda graph"
        )
    ]
    return rows + (copy_rows(n_bytes) if t <= 256 else [])


def _gated_rows(t: int, hv: int = 32, dv: int = 128) -> list[dict[str, Any]]:
    from deltaserve.ops.norm import gated_rms_norm, reference

    w = torch.randn(dv, device="cuda", dtype=DT)
    n = 8 if t <= 256 else 2
    bufs = [
        (
            torch.randn(t, hv, dv, device="cuda", dtype=DT),
            torch.randn(t, hv, 2 * dv, device="cuda", dtype=DT)[:, :, dv:],  # z: a strided view
        )
        for _ in range(n)
    ]
    t_ours = time_cuda_graph([(lambda a=a, z=z: gated_rms_norm(a, z, w, 1e-6)) for a, z in bufs])
    t_base = time_cuda_graph([(lambda a=a, z=z: reference.gated_rms_norm(a, z, w, 1e-6)) for a, z in bufs])
    n_bytes = 3 * t * hv * dv * 2
    shape = f"T={t} [{hv},{dv}] z strided"
    rows = [bandwidth_row("gated_rms_norm", shape, t_ours, t_base, "torch reference", n_bytes, "cuda graph")]
    return rows + (copy_rows(n_bytes) if t <= 256 else [])


def _fp8_rows(t: int, h: int) -> list[dict[str, Any]]:
    from deltaserve.ops.fp8 import per_token_group_quant_fp8
    from deltaserve.ops.norm import add_rms_norm, add_rms_norm_fp8, reference

    w = torch.randn(h, device="cuda", dtype=DT) * 0.1
    n = 8 if t <= 256 else 2
    bufs = [
        (torch.randn(t, h, device="cuda", dtype=DT), torch.randn(t, h, device="cuda", dtype=DT))
        for _ in range(n)
    ]

    def two_launches(a: torch.Tensor, c: torch.Tensor) -> None:
        per_token_group_quant_fp8(add_rms_norm(a, c, w, 1e-6)[0], 128)

    t_ours = time_cuda_graph([(lambda a=a, c=c: add_rms_norm_fp8(a, c, w, 1e-6)) for a, c in bufs])
    t_ref = time_cuda_graph([(lambda a=a, c=c: reference.add_rms_norm_fp8(a, c, w, 1e-6)) for a, c in bufs])
    t_two = time_cuda_graph([(lambda a=a, c=c: two_launches(a, c)) for a, c in bufs])
    n_bytes = 3 * t * h * 2 + t * h + t * (h // 128) * 4 + h * 2
    shape = f"T={t} H={h}"
    return [
        bandwidth_row("add_rms_norm_fp8", shape, t_ours, t_ref, "torch reference", n_bytes, "cuda graph"),
        bandwidth_row(
            "add_rms_norm_fp8", shape, t_ours, t_two, "norm + quant kernels", n_bytes, "cuda graph"
        ),
    ]


def sweep() -> list[dict[str, Any]]:
    """Times launch configs (elements per program, elements per warp) on the prefill shapes."""
    from deltaserve.ops.norm import add_rms_norm, gated_rms_norm, kernels

    saved = dict(kernels.CONFIG)
    rows = []
    t = 8192
    x2 = torch.randn(t, 2048, device="cuda", dtype=DT)
    x5 = torch.randn(t, 5120, device="cuda", dtype=DT)
    r2 = torch.randn_like(x2)
    r5 = torch.randn_like(x5)
    w2 = torch.randn(2048, device="cuda", dtype=DT)
    w5 = torch.randn(5120, device="cuda", dtype=DT)
    xg = torch.randn(t, 32, 128, device="cuda", dtype=DT)
    zg = torch.randn(t, 32, 256, device="cuda", dtype=DT)[:, :, 128:]
    wg = torch.randn(128, device="cuda", dtype=DT)
    xd = [torch.randn(256, 2048, device="cuda", dtype=DT) for _ in range(16)]
    gd = [torch.randn(256, 32, 128, device="cuda", dtype=DT) for _ in range(16)]
    cases = [
        (
            "add_rms_norm",
            "T=256 H=2048 graph",
            [(lambda a=a, c=c: add_rms_norm(a, c, w2, 1e-6)) for a, c in zip(xd[:8], xd[8:])],
            4 * 256 * 2048 * 2,
        ),
        (
            "gated_rms_norm",
            "T=256 [32,128] graph",
            [(lambda a=a, c=c: gated_rms_norm(a, c, wg, 1e-6)) for a, c in zip(gd[:8], gd[8:])],
            3 * 256 * 4096 * 2,
        ),
        ("add_rms_norm", f"T={t} H=2048", lambda: add_rms_norm(x2, r2, w2, 1e-6), 4 * t * 2048 * 2),
        ("add_rms_norm", f"T={t} H=5120", lambda: add_rms_norm(x5, r5, w5, 1e-6), 4 * t * 5120 * 2),
        ("gated_rms_norm", f"T={t} [32,128]", lambda: gated_rms_norm(xg, zg, wg, 1e-6), 3 * t * 4096 * 2),
    ]
    try:
        for tile, we in [(512, 128), (1024, 256), (1024, 128), (2048, 256), (2048, 512), (4096, 1024)]:
            kernels.CONFIG.update(tile=tile, warp_elems=we)
            for op, shape, fn, n_bytes in cases:
                ms = time_cuda_graph(fn) if isinstance(fn, list) else gpu_ms(fn)
                r = bandwidth_row(op, shape, ms, None, None, n_bytes, f"tile={tile} warp_elems={we}")
                rows.append(r)
    finally:
        kernels.CONFIG.update(saved)
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for t in (256, 8192):
        rows += _add_rows(t, 2048)
        if not quick:
            rows += _add_rows(t, 5120)
        rows += _gated_rows(t)
        rows += _fp8_rows(t, 2048)
    return rows


if __name__ == "__main__":
    from deltaserve.bench.common import print_table

    print_table(run(), title="norm")
