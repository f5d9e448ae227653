"""Benchmark: causal conv1d (Triton) vs plain torch in the same process.

    python -m deltaserve.bench.ops conv1d [--quick] [--json PATH]

Qwen3-Next GDN conv: conv_dim 8192, width 4, SiLU, bf16, state pool of 512 slots.
- decode: batch 256 (and 1), SGLang ``[S, D, W-1]`` and vLLM ``[S, W-1, D]`` pools; baseline =
  gather the state rows, cat, multiply-add, scatter back (a host without the kernel).
- prefill: 1 x 8192 tokens and 8 x 1024 with initial states; baseline = HF's ``F.conv1d`` path
  (transpose, depthwise conv with padding, SiLU, transpose back) plus the state write.
Floor = bytes that must move (x, out, state rows read + written) / 3.0 TB/s. Timing: CUDA-graph
replay of several calls, ours and baseline alike (host launch cost excluded; eager calls of these
wrappers cost about 0.1 ms of host time each).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from deltaserve.bench.common import bytes_floor_ms, time_cuda, time_cuda_graph

DESCRIPTION = "depthwise causal conv1d: decode update and varlen prefill, both pool layouts"
D, W, SLOTS = 8192, 4, 512
DT = torch.bfloat16


def _pool(layout: str) -> torch.Tensor:
    if layout == "sglang":
        return torch.randn(SLOTS, D, W - 1, device="cuda", dtype=DT)
    return torch.randn(SLOTS, W - 1, D, device="cuda", dtype=DT).transpose(1, 2)  # vLLM storage


def bandwidth_row(op, shape, ours_ms, base_ms, base, n_bytes, note="") -> dict[str, Any]:
    """A result row; ``achieved`` = bandwidth and percent of the 3.0 TB/s floor."""
    floor = bytes_floor_ms(n_bytes)
    bw = n_bytes / (ours_ms * 1e-3) / 1e12
    return dict(
        op=op,
        shape=shape,
        ours_ms=ours_ms,
        base_ms=base_ms,
        base=base,
        speedup=(base_ms / ours_ms) if base_ms else None,
        achieved=f"{bw:.2f}TB/s {100 * floor / ours_ms:.0f}%",
        floor_ms=floor,
        note=note,
    )


def copy_rows(n_bytes: int) -> list[dict[str, Any]]:
    """A torch device copy moving the same bytes (read + write): what launch latency allows."""
    src = torch.empty(n_bytes // 2, dtype=torch.uint8, device="cuda")
    dsts = [torch.empty_like(src) for _ in range(8)]
    fns = [(lambda d=d: d.copy_(src)) for d in dsts]
    shape = f"{n_bytes / 1e6:.1f} MB moved"
    return [
        bandwidth_row("torch_copy", shape, time_cuda(fns[0]), None, None, n_bytes, "events, same bytes"),
        bandwidth_row(
            "torch_copy", shape, time_cuda_graph(fns), None, None, n_bytes, "cuda graph, same bytes"
        ),
    ]


def gpu_ms(fn: Callable[[], Any], calls: int = 3) -> float:
    """GPU ms per call: ``calls`` calls captured back to back in one CUDA graph, replayed (median).

    Host launch cost is excluded: ``common.time_cuda`` syncs after every call, so for kernels near
    0.1 ms it mostly measures the Python launch path (about 0.1 ms per call for these wrappers).
    """
    return time_cuda_graph([fn] * calls)


def _decode_rows(bsz: int, layout: str, with_base: bool = True) -> list[dict[str, Any]]:
    from deltaserve.ops.conv1d import causal_conv1d_decode

    w = torch.randn(D, W, device="cuda", dtype=DT)
    b = torch.randn(D, device="cuda", dtype=DT)
    slots = torch.randperm(SLOTS, device="cuda")[:bsz].to(torch.int32)
    # 8 calls on distinct inputs and pools per graph, as 8 layers of a captured decode step
    bufs = [(torch.randn(bsz, D, device="cuda", dtype=DT), _pool(layout)) for _ in range(8)]

    def base(x, pool):
        idx = slots.long()
        full = torch.cat([pool[idx], x[:, :, None]], dim=-1)  # [B, D, W]
        y = (full.float() * w.float()).sum(-1) + b.float()
        pool[idx] = full[:, :, 1:]
        return F.silu(y).to(DT)

    ours_fns = [
        (lambda x=x, p=p: causal_conv1d_decode(x, w, b, conv_state=p, state_slots=slots)) for x, p in bufs
    ]
    t_ours = time_cuda_graph(ours_fns)
    t_base = time_cuda_graph([(lambda x=x, p=p: base(x, p)) for x, p in bufs]) if with_base else None
    n_bytes = 2 * bsz * D * 2 + 2 * bsz * D * (W - 1) * 2 + D * (W + 1) * 2
    shape = f"B={bsz} D={D} W={W} {layout}"
    row = bandwidth_row("conv1d_decode", shape, t_ours, t_base, "torch gather/scatter", n_bytes, "cuda graph")
    return [row] + (copy_rows(n_bytes) if with_base else [])


def _prefill_row(lens: list[int], layout: str, init: bool, with_base: bool = True) -> dict[str, Any]:
    from deltaserve.ops.conv1d import causal_conv1d_prefill

    t = sum(lens)
    bsz = len(lens)
    x = torch.randn(t, D, device="cuda", dtype=DT)
    w = torch.randn(D, W, device="cuda", dtype=DT)
    b = torch.randn(D, device="cuda", dtype=DT)
    pool = _pool(layout)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    slots = torch.randperm(SLOTS, device="cuda")[:bsz].to(torch.int32)
    has_init = torch.full((bsz,), init, device="cuda", dtype=torch.bool)

    def ours():
        return causal_conv1d_prefill(
            x, w, b, cu_seqlens=cu, conv_state=pool, state_slots=slots, has_initial_state=has_init
        )

    starts = cu[:-1].tolist()
    slot_list = slots.tolist()
    zeros = torch.zeros(D, W - 1, device="cuda", dtype=DT)

    def base():  # HF path per sequence (with the initial state prepended when present)
        outs = []
        for i, n in enumerate(lens):
            xs = x[starts[i] : starts[i] + n].t()  # [D, L]
            hist = pool[slot_list[i]] if init else zeros
            full = torch.cat([hist, xs], dim=-1)[None]  # [1, D, W-1+L]
            y = F.conv1d(full, w[:, None, :], b, groups=D)[0]  # [D, L]
            outs.append(F.silu(y).t())
            pool[slot_list[i]] = full[0, :, -(W - 1) :]
        return torch.cat(outs).contiguous()

    n_bytes = 2 * t * D * 2 + bsz * D * (W - 1) * 2 * (2 if init else 1) + D * (W + 1) * 2
    shape = f"{bsz}x{lens[0]} D={D} {layout}{' init' if init else ''}"
    t_base = gpu_ms(base) if with_base else None
    return bandwidth_row(
        "conv1d_prefill", shape, gpu_ms(ours), t_base, "torch F.conv1d (HF path)", n_bytes, "cuda graph"
    )


def run(quick: bool = False) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for layout in ("sglang",) if quick else ("sglang", "vllm"):
        rows += _decode_rows(256, layout)
        if not quick:
            rows += _decode_rows(1, layout)
        rows.append(_prefill_row([8192], layout, False))
        if not quick:
            rows.append(_prefill_row([1024] * 8, layout, True))
    return rows


if __name__ == "__main__":
    from deltaserve.bench.common import print_table

    print_table(run(), title="conv1d")


def sweep() -> list[dict[str, Any]]:
    """Times launch configs of the prefill (1 x 8192, both pools) and decode (B=256) kernels."""
    from deltaserve.ops.conv1d import kernels

    saved_p, saved_d = dict(kernels.PREFILL_CONFIG), dict(kernels.DECODE_CONFIG)
    rows = []
    try:
        for bt, bd, nw in [(16, 128, 4), (32, 128, 4), (16, 256, 4), (8, 256, 2), (8, 512, 4), (16, 512, 8)]:
            kernels.PREFILL_CONFIG.update(block_t=bt, block_d=bd, num_warps=nw)
            for layout in ("sglang", "vllm"):
                r = _prefill_row([8192], layout, False, with_base=False)
                rows.append(dict(r, note=f"block_t={bt} block_d={bd} warps={nw}"))
        kernels.PREFILL_CONFIG.update(saved_p)
        for bd, nw in [(64, 1), (128, 1), (128, 2), (256, 2)]:
            kernels.DECODE_CONFIG.update(block_d=bd, num_warps=nw)
            for layout in ("sglang", "vllm"):
                r = _decode_rows(256, layout, with_base=False)[0]
                rows.append(dict(r, note=f"graph block_d={bd} warps={nw}"))
    finally:
        kernels.PREFILL_CONFIG.update(saved_p)
        kernels.DECODE_CONFIG.update(saved_d)
    return rows
