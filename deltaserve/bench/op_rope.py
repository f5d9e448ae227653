"""Benchmark: fused q/k RMSNorm + partial RoPE + KV-cache write (Triton) vs plain torch.

    python -m deltaserve.bench.ops rope [--quick] [--json PATH]

Qwen3-Next full attention: 16 q / 2 kv heads, head_dim 256, rotary 64, bf16, q a strided view of
the q_proj output (query and gate per head), paged KV cache with 16-token pages. Decode batch 256
and 8192-token prefill. Bytes = q, k, v read; q_out, k_out, K and V cache rows written; cos/sin.
Baseline = the torch reference ops on the GPU (per-head norm, rotary) plus an index_put cache write.
Floor = bytes / 3.0 TB/s. Timing: CUDA-graph replay of several calls, ours and baseline alike (host
launch cost excluded; eager calls of these wrappers cost about 0.1 ms of host time each).
"""

from __future__ import annotations

from typing import Any

import torch

from deltaserve.bench.common import time_cuda_graph
from deltaserve.bench.op_conv1d import bandwidth_row, copy_rows

DESCRIPTION = "fused per-head q/k norm + partial RoPE + paged KV write"
HQ, HKV, D, RD, PAGE = 16, 2, 256, 64, 16
DT = torch.bfloat16


def _rows(t: int, with_base: bool = True) -> list[dict[str, Any]]:
    from deltaserve.ops.norm import reference as norm_ref
    from deltaserve.ops.rope import qk_norm_rope, reference, rope_cos_sin

    qg = torch.randn(t, HQ, 2 * D, device="cuda", dtype=DT)
    q = qg[:, :, :D]
    k = torch.randn(t, HKV, D, device="cuda", dtype=DT)
    v = torch.randn(t, HKV, D, device="cuda", dtype=DT)
    qw = torch.randn(D, device="cuda", dtype=DT) * 0.1
    kw = torch.randn(D, device="cuda", dtype=DT) * 0.1
    cos, sin = rope_cos_sin(torch.randint(0, 100000, (t,), device="cuda"), RD, 1e7)
    nb = (t + PAGE - 1) // PAGE + 8
    kc = torch.zeros(nb, PAGE, HKV, D, device="cuda", dtype=DT)
    vc = torch.zeros_like(kc)
    slot = torch.randperm(nb * PAGE, device="cuda")[:t]

    def ours(q=q):
        return qk_norm_rope(q, k, qw, kw, cos, sin, 1e-6, v=v, k_cache=kc, v_cache=vc, slot_mapping=slot)

    def base(q=q):
        qo = reference.apply_rotary(norm_ref.rms_norm(q, qw, 1e-6), cos, sin)
        ko = reference.apply_rotary(norm_ref.rms_norm(k, kw, 1e-6), cos, sin)
        kc.view(-1, HKV, D)[slot] = ko
        vc.view(-1, HKV, D)[slot] = v
        return qo, ko

    n_bytes = 2 * t * HQ * D * 2 + 5 * t * HKV * D * 2 + 2 * t * RD * 4 + t * 8
    shape = f"T={t} {HQ}/{HKV}x{D} rd={RD} page={PAGE}"
    # decode: 8 calls on distinct q per graph (8 layers of a step); prefill: 2 calls
    qs = [q] + [torch.randn_like(qg)[:, :, :D] for _ in range(7 if t <= 256 else 1)]
    t_ours = time_cuda_graph([(lambda a=a: ours(a)) for a in qs])
    t_base = time_cuda_graph([(lambda a=a: base(a)) for a in qs]) if with_base else None
    rows = [bandwidth_row("qk_norm_rope", shape, t_ours, t_base, "torch reference", n_bytes, "cuda graph")]
    if t <= 256 and with_base:
        rows += copy_rows(n_bytes)
    return rows


def sweep() -> list[dict[str, Any]]:
    """Times launch configs (elements per program tile, warps) at T=256 (graph) and T=8192."""
    from deltaserve.ops.rope import kernels

    saved = dict(kernels.CONFIG)
    rows = []
    try:
        for tile, nw in [(256, 1), (512, 1), (512, 2), (512, 4), (1024, 2)]:
            kernels.CONFIG.update(tile=tile, num_warps=nw)
            for t in (256, 8192):
                r = _rows(t, with_base=False)[0]
                rows.append(dict(r, note=f"tile={tile} warps={nw}"))
    finally:
        kernels.CONFIG.update(saved)
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    return _rows(256) + _rows(8192)


if __name__ == "__main__":
    from deltaserve.bench.common import print_table

    print_table(run(), title="rope")
