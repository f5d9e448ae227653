"""Benchmark: paged gated attention (Triton) vs torch SDPA on gathered KV, in the same process.

    python -m deltaserve.bench.ops attention [--quick] [--json PATH]
    python -m deltaserve.bench.op_attention [--quick] [--sweep] [--json PATH]   (standalone, tuning)

Shapes (Qwen3-Next full-attention layer: 16 q / 2 kv heads, head_dim 256, bf16 KV, sigmoid gate):
- decode: batch 64 x context 8192, pages 16 / 64 / 1; speculative verify with 4 queries per sequence.
  Floor = K+V bytes read / 3.0 TB/s (the KV-read floor).
- prefill: 1 x 8192 tokens (no prefix), 4 x 2048, and a 2048-token chunk after a 6144-token prefix.
  Floor = causal FLOPs / 750 TFLOP/s.
Baseline: the pages are gathered into contiguous K/V (timed: a paged engine without this kernel
must do it) and ``scaled_dot_product_attention`` runs with each SDPA backend that accepts the shape
(flash, cuDNN, efficient; math for small ones); the fastest is the baseline. ``note`` also gives the
fastest SDPA time without the gather. ``--sweep`` times a grid of launch configs (tunes
``kernels.pick_config``).
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F

from deltaserve.bench.common import (
    bytes_floor_ms,
    device_record,
    flops_floor_ms,
    print_table,
    time_cuda,
    time_cuda_graph,
)

DESCRIPTION = "paged gated causal attention (decode split-K, prefill) vs SDPA on gathered KV"
HQ, HKV, D = 16, 2, 256


def make_inputs(q_lens: list[int], seq_lens: list[int], page: int, seed: int = 0) -> dict[str, Any]:
    """Random bf16 paged batch on the GPU; each sequence's pages in shuffled order."""
    torch.manual_seed(seed)
    dev = "cuda"
    pages = [(s + page - 1) // page for s in seq_lens]
    nb, mb = sum(pages), max(pages)
    k_cache = torch.randn(nb, page, HKV, D, device=dev, dtype=torch.bfloat16)  # [NB, BS, Hkv, D]
    v_cache = torch.randn(nb, page, HKV, D, device=dev, dtype=torch.bfloat16)
    perm = torch.randperm(nb, device=dev, dtype=torch.int32)
    tables = torch.zeros(len(seq_lens), mb, dtype=torch.int32, device=dev)  # [B, MB]
    at = 0
    for b, n in enumerate(pages):
        tables[b, :n] = perm[at : at + n]
        at += n
    t = sum(q_lens)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=dev)
    return dict(
        q=torch.randn(t, HQ, D, device=dev, dtype=torch.bfloat16),
        gate=torch.randn(t, HQ, D, device=dev, dtype=torch.bfloat16),
        k_cache=k_cache,
        v_cache=v_cache,
        block_tables=tables,
        cu_seqlens_q=cu,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
        q_lens=q_lens,
        seq_lens_list=seq_lens,
        page=page,
    )


def ours(inp: dict[str, Any], config: Any = None) -> Callable[[], torch.Tensor]:
    from deltaserve.ops.attention import kernels

    kw = dict(
        block_tables=inp["block_tables"],
        cu_seqlens_q=inp["cu_seqlens_q"],
        seq_lens=inp["seq_lens"],
        scale=D**-0.5,
        gate=inp["gate"],
        max_seqlen_q=max(inp["q_lens"]),
        max_seqlen_k=max(inp["seq_lens_list"]),
        config=config,
    )
    return lambda: kernels.paged_attention(inp["q"], inp["k_cache"], inp["v_cache"], **kw)


def sdpa_baselines(inp: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """{backend: (ms with the gather, ms SDPA only)}; equal-length batches, one batched SDPA call."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right

    ql, sl = inp["q_lens"][0], inp["seq_lens_list"][0]
    assert len(set(inp["q_lens"])) == 1 and len(set(inp["seq_lens_list"])) == 1
    b = len(inp["q_lens"])
    q = inp["q"].view(b, ql, HQ, D).transpose(1, 2)  # [B, Hq, ql, D]
    gate = inp["gate"]

    def gather(cache: torch.Tensor) -> torch.Tensor:
        g = cache[inp["block_tables"].long()]  # [B, MB, BS, Hkv, D]
        return g.view(b, -1, HKV, D)[:, :sl].transpose(1, 2)  # [B, Hkv, L, D]

    k_pre, v_pre = gather(inp["k_cache"]), gather(inp["v_cache"])
    if ql == 1:
        mask_kw: dict[str, Any] = {}
    elif ql == sl:
        mask_kw = {"is_causal": True}
    else:
        mask_kw = {"attn_mask": causal_lower_right(ql, sl)}

    def attn(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        o = F.scaled_dot_product_attention(q, k, v, scale=D**-0.5, enable_gqa=True, **mask_kw)
        return o.transpose(1, 2).reshape(b * ql, HQ, D) * torch.sigmoid(gate)

    res = {}
    warnings.filterwarnings("ignore", message=".*kernel not used because.*")
    warnings.filterwarnings("ignore", message=".*has been runtime disabled.*")
    warnings.filterwarnings("ignore", message=".*fused kernels require.*")
    for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"):
        if name == "MATH" and ql * sl * b > 4096 * 8192:
            continue
        try:
            with sdpa_kernel(getattr(SDPBackend, name)):
                only = time_cuda(lambda: attn(k_pre, v_pre), rep=10, min_ms=0)
                full = time_cuda(
                    lambda: attn(gather(inp["k_cache"]), gather(inp["v_cache"])), rep=10, min_ms=0
                )
            res[name] = (full, only)
        except RuntimeError:  # this backend does not take the shape (e.g. GQA on efficient)
            pass
    return res


def max_err(inp: dict[str, Any]) -> float:
    """Max abs error of ours vs the fp32 reference on the first two sequences."""
    from deltaserve.ops.attention import reference

    n = sum(inp["q_lens"][:2])
    out = ours(inp)()[:n]
    sub = dict(
        block_tables=inp["block_tables"][:2],
        cu_seqlens_q=inp["cu_seqlens_q"][:3],
        seq_lens=inp["seq_lens"][:2],
        scale=D**-0.5,
        gate=inp["gate"][:n],
    )
    ref = reference.paged_attention(inp["q"][:n], inp["k_cache"], inp["v_cache"], **sub)
    return (out.float() - ref.float()).abs().max().item()


def shapes(quick: bool) -> list[tuple[str, list[int], list[int], int]]:
    rows = [("decode", [1] * 64, [8192] * 64, 16)]
    if not quick:
        rows += [("decode", [1] * 64, [8192] * 64, 64), ("decode", [1] * 64, [8192] * 64, 1)]
        rows += [("verify", [4] * 64, [8192] * 64, 16)]
    rows += [("prefill", [8192], [8192], 16)]
    if not quick:
        rows += [("prefill", [2048] * 4, [2048] * 4, 16), ("prefill", [2048], [8192], 16)]
    return rows


def bench_shape(kind: str, q_lens: list[int], seq_lens: list[int], page: int) -> dict[str, Any]:
    inp = make_inputs(q_lens, seq_lens, page)
    shape = f"{kind} B={len(q_lens)} q={q_lens[0]} ctx={seq_lens[0]} pg={page}"
    err = max_err(inp)
    ms_events = time_cuda(ours(inp))
    # decode runs captured in a CUDA graph in serving: time it that way (4 calls back to back)
    ms = time_cuda_graph([ours(inp)] * 4) if kind != "prefill" else ms_events
    base = sdpa_baselines(inp)
    best = min(base, key=lambda k: base[k][0]) if base else None
    best_only = min((v[1] for v in base.values()), default=None)
    kv_bytes = 2 * sum(seq_lens) * HKV * D * 2
    pairs = sum(s * q - q * (q - 1) // 2 for q, s in zip(q_lens, seq_lens))
    flops = 4 * pairs * HQ * D
    if kind == "prefill":
        floor = flops_floor_ms(flops)
        achieved = f"{flops / ms / 1e9:.0f}TFLOP/s {100 * floor / ms:.0f}%"
    else:
        floor = bytes_floor_ms(kv_bytes)
        achieved = f"{kv_bytes / ms / 1e9:.2f}TB/s {100 * floor / ms:.0f}%"
    base_ms = base[best][0] if best else None
    only = f"{best_only:.3f}" if best_only is not None else "-"
    return dict(
        op="attention",
        shape=shape,
        ours_ms=ms,
        base_ms=base_ms,
        base=f"sdpa[{best}]+gather" if best else None,
        speedup=base_ms / ms if base_ms else None,
        achieved=achieved,
        floor_ms=floor,
        note=f"{'graph; ' if kind != 'prefill' else ''}events {ms_events:.3f}; sdpa w/o gather {only}; err {err:.0e}",
        sdpa={k: {"with_gather_ms": v[0], "sdpa_only_ms": v[1]} for k, v in base.items()},
    )


def run(quick: bool = False) -> list[dict[str, Any]]:
    """One row per shape (see the module docstring)."""
    rows = []
    for kind, q_lens, seq_lens, page in shapes(quick):
        rows.append(bench_shape(kind, q_lens, seq_lens, page))
        torch.cuda.empty_cache()
    return rows


def sweep() -> dict[str, list[dict[str, Any]]]:
    """Times a grid of launch configs on the decode (page 16, 64, 1) and 1 x 8192 prefill shapes."""
    from deltaserve.ops.attention.kernels import AttnConfig

    dec = [
        AttnConfig(2, bn, sp, 4, st)
        for bn, sp, st in ((32, 4, 3), (32, 8, 3), (32, 2, 3), (64, 4, 3), (64, 4, 2))
    ]
    dec += [AttnConfig(2, 32, 4, 4, 4), AttnConfig(2, 16, 4, 4, 4), AttnConfig(2, 64, 8, 4, 2)]
    grids = {
        "decode_pg16": (([1] * 64, [8192] * 64, 16), dec),
        "decode_pg64": (([1] * 64, [8192] * 64, 64), dec),
        "decode_pg1": (([1] * 64, [8192] * 64, 1), dec),
        "prefill_8k": (
            ([8192], [8192], 16),
            [AttnConfig(16, 64, 1, 8, 2), AttnConfig(16, 64, 1, 8, 3), AttnConfig(16, 32, 1, 4, 2)],
        ),
    }
    out: dict[str, list[dict[str, Any]]] = {}
    for name, ((q_lens, seq_lens, page), cfgs) in grids.items():
        inp = make_inputs(q_lens, seq_lens, page)
        out[name] = []
        for cfg in cfgs:
            try:
                fn = ours(inp, cfg)
                ms = time_cuda(fn, rep=10, min_ms=0) if "prefill" in name else time_cuda_graph([fn] * 4)
            except Exception as e:  # out of shared memory / registers
                ms = float("nan")
                print(f"  {cfg}: failed ({type(e).__name__})")
            out[name].append({"config": asdict(cfg), "ms": ms})
            print(f"{name} {cfg}: {ms:.4f} ms")
        del inp
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deltaserve.bench.op_attention", description=DESCRIPTION)
    p.add_argument("--quick", action="store_true", help="decode page 16 and 1 x 8192 prefill only")
    p.add_argument("--sweep", action="store_true", help="also time a grid of launch configs")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("op_attention: needs a CUDA GPU")
        return 1
    result: dict[str, Any] = {"device": device_record()}
    rows = run(quick=args.quick)
    result["rows"] = rows
    print_table(rows, title=f"== attention ({result['device'].get('device')}) ==")
    if args.sweep:
        result["sweep"] = sweep()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
