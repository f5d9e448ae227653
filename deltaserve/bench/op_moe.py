"""Benchmark: fused MoE (Triton) vs a plain torch per-expert loop, Qwen3-Next shapes, same process.

    python -m deltaserve.bench.ops moe [--quick] [--json PATH]

Shapes: E 512, top-10, H 2048, expert I 512, shared expert I 512, bf16 activations; BF16 and
block-FP8 (128x128, W8A16) expert weights. Ours = ``ops.moe.fused_moe`` (routing + shared gate,
alignment, both expert GEMMs, combine, cast: the whole block after the router GEMM).
Baseline = torch: softmax/top-k, then per touched expert gather, ``F.linear`` x2, SiLU·mul,
``index_add_`` (what a host without a fused kernel runs; it syncs once for the expert list).
Floor = weight bytes of the experts actually touched (+ shared) / 3.0 TB/s; ``routed floor`` in the
note leaves the shared expert out (the issue's 21 µs at M=1). Ours timed as CUDA-graph replays of
8 calls with different inputs (different experts each call, so L2 holds no weights across calls);
the baseline with CUDA events (it cannot be captured).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from deltaserve.bench.common import bytes_floor_ms, fmt_row, time_cuda, time_cuda_graph

DESCRIPTION = "fused MoE, Qwen3-Next shapes (E512 top10 I512 + shared), bf16 and fp8 experts"
E, H, I, K = 512, 2048, 512, 10
DT = torch.bfloat16


def make_weights(fp8: bool, seed: int = 0):
    from deltaserve.ops.fp8.reference import quantize_block_fp8
    from deltaserve.ops.moe import ExpertWeights, SharedExpertWeights

    torch.manual_seed(seed)
    w13 = torch.randn(E, 2 * I, H, device="cuda", dtype=DT) / H**0.5
    w2 = torch.randn(E, H, I, device="cuda", dtype=DT) / I**0.5
    s13 = torch.randn(2 * I, H, device="cuda", dtype=DT) / H**0.5
    s2 = torch.randn(H, I, device="cuda", dtype=DT) / I**0.5
    gate = torch.randn(1, H, device="cuda", dtype=DT) / H**0.5
    if not fp8:
        return ExpertWeights(w13, w2), SharedExpertWeights(s13, s2, gate)
    q13, sc13 = quantize_block_fp8(w13)
    del w13
    q2, sc2 = quantize_block_fp8(w2)
    del w2
    rb13 = (torch.arange(2 * I, device="cuda") // 128).contiguous()
    rb2 = torch.arange(H, device="cuda") // 128
    qs13, ss13 = quantize_block_fp8(s13)
    qs2, ss2 = quantize_block_fp8(s2)
    return (
        ExpertWeights(q13, q2, sc13, sc2, rb13, rb2, 128),
        SharedExpertWeights(qs13, qs2, gate, ss13, ss2, rb13, rb2, 128),
    )


def torch_moe(x, logits, ex, sh):
    """Plain torch MoE block (bf16 weights): the in-process baseline."""
    probs = torch.softmax(logits.float(), -1)
    w, ids = torch.topk(probs, K, -1)
    w = (w / w.sum(-1, keepdim=True)).to(x.dtype)
    out = torch.zeros_like(x)
    for e in torch.unique(ids).tolist():
        tok, pos = torch.where(ids == e)
        g, u = F.linear(x[tok], ex.w13[e]).chunk(2, -1)
        out.index_add_(0, tok, F.linear(F.silu(g) * u, ex.w2[e]) * w[tok, pos, None])
    g, u = F.linear(x, sh.w13).chunk(2, -1)
    return out + torch.sigmoid(F.linear(x, sh.gate_weight)) * F.linear(F.silu(g) * u, sh.w2)


def _row(op, t, ours, base, floor, routed_floor, note):
    return dict(
        op=op,
        shape=f"T={t} E{E} k{K} H{H} I{I}+sh",
        ours_ms=ours,
        base_ms=base,
        base="torch per-expert loop" if base else None,
        speedup=(base / ours) if base else None,
        achieved=f"{100 * floor / ours:.0f}% floor",
        floor_ms=floor,
        note=f"routed floor {routed_floor * 1e3:.1f}us; {note}",
    )


def _rows_for(t: int, fp8: bool, weights, with_base: bool) -> list[dict[str, Any]]:
    from deltaserve.ops.moe import fused_moe

    ex, sh = weights
    n = 8 if t <= 256 else 2
    xs = [torch.randn(t, H, device="cuda", dtype=DT) for _ in range(n)]
    ls = [torch.randn(t, E, device="cuda", dtype=DT) for _ in range(n)]
    fns = [(lambda x=x, lg=lg: fused_moe(x, lg, K, True, ex, sh)) for x, lg in zip(xs, ls)]
    ours = time_cuda_graph(fns)
    touched = torch.unique(torch.topk(ls[0].float(), K, -1).indices).numel()
    per_expert = 3 * H * I * (1 if fp8 else 2)
    floor = bytes_floor_ms((touched + 1) * per_expert)
    routed_floor = bytes_floor_ms(touched * per_expert)
    base = time_cuda(lambda: torch_moe(xs[0], ls[0], ex, sh), warmup=2, rep=5) if with_base else None
    op = "moe_fp8" if fp8 else "moe_bf16"
    note = f"{touched} experts touched; graph x{n}" + ("; W8A16" if fp8 else "")
    return [_row(op, t, ours, base, floor, routed_floor, note)]


def run(quick: bool = False) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    ts = (1, 16, 256, 4096) if quick else (1, 16, 64, 256, 1024, 4096)
    weights = make_weights(False)
    for t in ts:
        rows += _rows_for(t, False, weights, with_base=t <= (256 if quick else 1024))
    del weights
    torch.cuda.empty_cache()
    weights = make_weights(True)
    for t in ts:
        rows += _rows_for(t, True, weights, with_base=False)
    return rows


def sweep() -> list[dict[str, Any]]:
    """Times launch configs of the expert GEMMs (bf16) at decode and prefill sizes."""
    from deltaserve.ops.moe import kernels

    weights = make_weights(False)
    rows = []
    cands = {
        16: [
            (16, (32, 128, 4, 4), (64, 128, 4, 4)),
            (16, (16, 128, 4, 4), (32, 128, 4, 4)),
            (16, (64, 128, 4, 4), (128, 128, 4, 4)),
            (16, (32, 64, 4, 6), (64, 64, 4, 6)),
            (16, (32, 64, 4, 6), (32, 64, 4, 6)),
            (16, (32, 64, 4, 6), (32, 128, 4, 4)),
            (16, (16, 64, 2, 8), (32, 64, 2, 8)),
            (16, (64, 64, 4, 6), (64, 64, 4, 6)),
        ],
        64: [
            (64, (64, 64, 4, 4), (128, 64, 8, 3)),
            (64, (128, 64, 8, 3), (128, 64, 8, 3)),
            (128, (64, 64, 8, 3), (128, 64, 8, 3)),
        ],
    }
    with kernels.configs_restored() as configs:
        for t, bucket in ((1, 16), (256, 16), (4096, 64)):
            for bm, up, down in cands[bucket]:
                configs["bf16"][:] = [(1 << 62, bm, (*up, False), down)]
                try:
                    r = _rows_for(t, False, weights, with_base=False)[0]
                    r["note"] = f"BM{bm} up{up} down{down}"
                except Exception as exc:  # a config that does not compile is a row, not a crash
                    r = dict(op="moe_bf16", shape=f"T={t}", note=f"BM{bm} {up} {down}: {exc}"[:200])
                rows.append(r)
                print(fmt_row(r), flush=True)
    return rows


if __name__ == "__main__":
    from deltaserve.bench.common import print_table

    print_table(run(), title="moe")


def profile() -> str:
    """Per-kernel GPU times (torch.profiler, eager calls) of fused_moe at T=1 and T=256, bf16."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    from deltaserve.ops.moe import fused_moe

    ex, sh = make_weights(False)
    out = []
    for t in (1, 256):
        xs = [torch.randn(t, H, device="cuda", dtype=DT) for _ in range(8)]
        ls = [torch.randn(t, E, device="cuda", dtype=DT) for _ in range(8)]
        for x, lg in zip(xs, ls):
            fused_moe(x, lg, K, True, ex, sh)
        torch.cuda.synchronize()
        with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
            for x, lg in zip(xs, ls):
                fused_moe(x, lg, K, True, ex, sh)
            torch.cuda.synchronize()
        out.append(f"T={t} (8 calls)\n" + prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
    return "\n".join(out)
