"""GDN op benchmark: our Triton prefill / decode against fla 0.6.0 measured in the same process.

fla gets contiguous q/k/v and a gathered initial-state tensor (its API has no state pool), with its
own in-kernel gating, beta sigmoid and q/k l2norm switched on, so both sides do the same math; ours
gets q/k/v as column views of one [T, conv_dim] tensor, as the model passes them.

Prefill rows give two times per side: ``ours_ms`` / ``base_ms`` are CUDA-event medians around a Python
call (they include the host's launch gaps), ``ours_device_ms`` / ``base_device_ms`` the same call with all
its launches queued behind a GPU sleep (device time only; in the note).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from deltaserve.bench.common import (
    bytes_floor_ms,
    flops_floor_ms,
    measure_copy_bw,
    time_cuda,
    time_cuda_graph,
    time_cuda_queued,
)

DESCRIPTION = "Gated DeltaNet chunked prefill and decode vs flash-linear-attention"
D = 128
# (label, Hk, Hv, sequence lengths, with initial states)
PREFILL_SHAPES = [
    ("hk16/hv32 1x32768", 16, 32, [32768], False),
    ("hk16/hv32 1x4096", 16, 32, [4096], False),
    ("hk16/hv32 8x2048 init", 16, 32, [2048] * 8, True),
    ("hk2/hv8 1x32768", 2, 8, [32768], False),
    ("hk16/hv64 1x32768", 16, 64, [32768], False),
    # a batch as a server prefills it (FlashQLA's and FlashInfer's published "8192x4" shape)
    ("hk16/hv32 4x8192", 16, 32, [8192] * 4, False),
]
DECODE_BATCHES = [1, 8, 64, 256, 512]
PREFILL_FLOP_PER_TOKEN_HEAD = 2 * (5 * 64 * D + 3 * D * D)  # chunked form, C = 64 (kernels.md 1)


def _fla() -> tuple[Any, Any, str]:
    try:
        import fla
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
    except Exception as exc:  # fla absent or broken: our numbers still come out
        return None, None, f"fla not importable ({type(exc).__name__})"
    return chunk_gated_delta_rule, fused_recurrent_gated_delta_rule, f"fla {getattr(fla, '__version__', '?')}"


def make_inputs(
    t: int, hk: int, hv: int, lead: tuple[int, ...] = (), seed: int = 0
) -> dict[str, torch.Tensor]:
    """bf16 q, k, v as column views of one mixed [*, conv_dim] tensor and a, b as views of one [*, 2 Hv]."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    conv_dim = 2 * hk * D + hv * D
    shape = (*lead, t) if lead else (t,)
    mixed = torch.randn(*shape, conv_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    ba = torch.randn(*shape, 2 * hv, device="cuda", dtype=torch.bfloat16, generator=gen)
    q = mixed[..., : hk * D].unflatten(-1, (hk, D))
    k = mixed[..., hk * D : 2 * hk * D].unflatten(-1, (hk, D))
    v = mixed[..., 2 * hk * D :].unflatten(-1, (hv, D))
    A_log = torch.empty(hv, device="cuda").uniform_(-1.0, 1.5, generator=gen)
    dt_bias = torch.randn(hv, device="cuda", generator=gen) * 0.5
    return {"q": q, "k": k, "v": v, "a": ba[..., :hv], "b": ba[..., hv:], "A_log": A_log, "dt_bias": dt_bias}


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return ((x.float() - y.float()).norm() / y.float().norm().clamp_min(1e-30)).item()


def bench_prefill(label, hk, hv, lens, with_init, fla_chunk, config=None, check=True) -> dict[str, Any]:
    from deltaserve.ops.gdn.prefill import gdn_prefill

    t = sum(lens)
    nb = len(lens)
    x = make_inputs(t, hk, hv)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    pool = torch.randn(nb + 2, hv, D, D, device="cuda") * 0.1
    slots = torch.arange(1, nb + 1, device="cuda", dtype=torch.int32)
    has_init = torch.full((nb,), with_init, device="cuda", dtype=torch.bool)
    pool0 = pool.clone()

    def ours():
        return gdn_prefill(
            x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], cu_seqlens=cu, state=pool,
            state_slots=slots, has_initial_state=has_init, _config=config,
        )  # fmt: skip

    ms = time_cuda(ours, rep=10 if t >= 16384 else 30)
    device_ms = time_cuda_queued(ours)
    io_bytes = t * (2 * hk * D * 2 + 2 * hv * D * 2 + 2 * hv * 2) + nb * hv * D * D * 4 * (
        2 if with_init else 1
    )
    flops = t * hv * PREFILL_FLOP_PER_TOKEN_HEAD
    floor = max(bytes_floor_ms(io_bytes), flops_floor_ms(flops))
    row: dict[str, Any] = {
        "op": "gdn_prefill",
        "shape": label,
        "ours_ms": ms,
        "floor_ms": floor,
        "achieved": f"{flops / ms / 1e9:.0f} TFLOP/s",
        "base": "fla chunk_gated_delta_rule",
        "base_ms": None,
        "speedup": None,
        "config": config,
        # the same call with its launches queued behind a GPU sleep: device time without host gaps
        "ours_device_ms": device_ms,
        "base_device_ms": None,
        "note": f"device {device_ms:.4f} ms",
    }
    if fla_chunk is not None:
        qc, kc, vc = (x[n].contiguous()[None] for n in ("q", "k", "v"))
        ac, bc = x["a"].contiguous()[None], x["b"].contiguous()[None]
        h0 = pool0[1 : nb + 1].clone() if with_init else None
        cu64 = cu.long()
        # host copy made once, as a serving host already holds it: a .cpu() inside the call would
        # sync and add its wait to fla's time (it did until 2026-11-29; BENCHMARKS.md)
        cu_cpu = cu64.cpu()

        def base():
            return fla_chunk(
                qc, kc, vc, g=ac, beta=bc, A_log=x["A_log"], dt_bias=x["dt_bias"], use_gate_in_kernel=True,
                use_beta_sigmoid_in_kernel=True, use_qk_l2norm_in_kernel=True, initial_state=h0,
                output_final_state=True, cu_seqlens=cu64, cu_seqlens_cpu=cu_cpu,
            )  # fmt: skip

        try:
            bms = time_cuda(base, rep=10 if t >= 16384 else 30)
            bdev = time_cuda_queued(base)
            row.update(base_ms=bms, speedup=bms / ms, base_device_ms=bdev)
            row["note"] = f"device {device_ms:.4f} vs fla {bdev:.4f} ms ({bdev / device_ms:.2f}x)"
            if check:
                pool.copy_(pool0)
                o = ours()
                o_f, s_f = base()
                row["note"] += (
                    f"; vs fla: o rel {_rel(o, o_f[0]):.1e}, state rel {_rel(pool[1 : nb + 1], s_f):.1e}"
                )
        except Exception as exc:
            row["note"] += f"; fla failed: {type(exc).__name__}: {str(exc)[:80]}"
    return row


def bench_decode(
    nb, state_dtype, layout, fla_rec, graph, copy_bw, hk=16, hv=32, config=None
) -> dict[str, Any]:
    from deltaserve.ops.gdn.decode import gdn_decode

    per_layer = nb * hv * D * D * (4 if state_dtype == torch.float32 else 2)
    n_layers = 1 if not graph else int(min(36, max(2, math.ceil(160e6 / per_layer))))
    x = make_inputs(nb, hk, hv)
    shape = (nb + 1, hv, D, D)
    pools = [torch.randn(shape, device="cuda").to(state_dtype) * 0.1 for _ in range(n_layers)]
    if layout == "vk":
        pools = [p.transpose(-1, -2).contiguous() for p in pools]
    slots = torch.arange(1, nb + 1, device="cuda", dtype=torch.int32)

    def call(pool):
        return lambda: gdn_decode(
            x["q"], x["k"], x["v"], x["a"], x["b"], x["A_log"], x["dt_bias"], state=pool, state_slots=slots,
            state_layout=layout, _config=config,
        )  # fmt: skip

    fns = [call(p) for p in pools]
    ms = time_cuda_graph(fns) if graph else time_cuda(fns[0], rep=50)
    state_bytes = 2 * per_layer
    io = nb * (2 * hk * D * 2 + 2 * hv * D * 2 + 2 * hv * 2)
    gbps = (state_bytes + io) / (ms * 1e-3) / 1e9
    tag = "graph" if graph else "eager"
    row: dict[str, Any] = {
        "op": "gdn_decode",
        "shape": f"B={nb} {str(state_dtype)[6:]} {layout} {tag}",
        "ours_ms": ms,
        "floor_ms": bytes_floor_ms(state_bytes + io),
        "achieved": f"{gbps:.0f} GB/s {100 * gbps * 1e9 / copy_bw:.0f}%",
        "base": "fla fused_recurrent_gated_delta_rule",
        "base_ms": None,
        "speedup": None,
        "config": config,
    }
    if graph:
        # The same bytes through one torch elementwise kernel (x * 1), in the same graph shape: what a
        # streaming kernel reaches at this size (a 1 GiB copy hides the ramp and tail of a 64-sequence
        # launch). Not `copy_`: a captured device copy may become a copy-engine memcpy node (H200: 67 %
        # of the eager rate at 537 MB).
        dst = torch.empty_like(pools[0][1:])
        copy_ms = time_cuda_graph([lambda p=p: torch.mul(p[1:], 1, out=dst) for p in pools])
        row["note"] = (
            f"same-bytes x*1 {copy_ms * 1e3:.1f} us "
            f"({100 * state_bytes / (copy_ms * 1e-3) / copy_bw:.0f}% of 1 GiB rate); ours {100 * copy_ms / ms:.0f}% of it"
        )
        del dst
    if fla_rec is not None:
        qc, kc, vc = (x[n].contiguous()[:, None] for n in ("q", "k", "v"))
        ac, bc = x["a"].contiguous()[:, None], x["b"].contiguous()[:, None]
        h0s = [torch.randn(nb, hv, D, D, device="cuda").to(state_dtype) for _ in range(n_layers)]
        svf = layout == "vk"

        def fcall(h0):
            return lambda: fla_rec(
                qc, kc, vc, g=ac, beta=bc, A_log=x["A_log"], dt_bias=x["dt_bias"], use_gate_in_kernel=True,
                use_beta_sigmoid_in_kernel=True, use_qk_l2norm_in_kernel=True, initial_state=h0,
                output_final_state=True, state_v_first=svf,
            )  # fmt: skip

        try:
            ffns = [fcall(h) for h in h0s]
            bms = time_cuda_graph(ffns) if graph else time_cuda(ffns[0], rep=50)
            row.update(base_ms=bms, speedup=bms / ms)
        except Exception as exc:
            row["note"] = f"{row.get('note', '')} fla failed: {type(exc).__name__}: {str(exc)[:80]}".strip()
    return row


def run(quick: bool = False) -> list[dict[str, Any]]:
    fla_chunk, fla_rec, fla_note = _fla()
    copy_bw = measure_copy_bw()
    rows: list[dict[str, Any]] = [
        {"op": "copy", "shape": "1 GiB d2d", "achieved": f"{copy_bw / 1e9:.0f} GB/s", "note": fla_note}
    ]
    shapes = PREFILL_SHAPES[:2] if quick else PREFILL_SHAPES
    for label, hk, hv, lens, init in shapes:
        rows.append(bench_prefill(label, hk, hv, lens, init, fla_chunk))
        torch.cuda.empty_cache()
    batches = [1, 64] if quick else DECODE_BATCHES
    for sdt in (torch.float32, torch.bfloat16):
        for graph in (False, True):
            for nb in batches:
                rows.append(bench_decode(nb, sdt, "kv", fla_rec, graph, copy_bw))
                torch.cuda.empty_cache()
    for sdt in (torch.float32, torch.bfloat16):
        rows.append(bench_decode(256, sdt, "vk", fla_rec, False, copy_bw))
    return rows
