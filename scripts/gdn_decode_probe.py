"""Probe: a persistent, software-pipelined GDN decode kernel against the shipped one (one GPU run).

    python3 scripts/gdn_decode_probe.py OUT.json

The shipped kernel runs one (sequence, value head, V block) tile per program; this variant runs a grid
of a few programs per SM, each looping over tiles with ``tl.range(num_stages=...)`` so the next tile's
slot, state and q/k/v loads are issued while the current one computes. Checked against the shipped
kernel (outputs and states), then timed in CUDA graphs at B = 64 / 256 / 512 for bf16 and fp32 states
on both layouts, with the copy bandwidth measured in the same process.
"""

# ruff: noqa: B023 - the timing closures run inside the loop iteration that builds them
from __future__ import annotations

import json
import sys

import torch
import triton
import triton.language as tl

from deltaserve.ops.gdn.triton_common import gate_scalar, logical_state_strides


@triton.jit
def _decode_persistent_kernel(
    q_ptr, k_ptr, v_ptr, a_ptr, b_ptr, alog_ptr, dtb_ptr, state_ptr, slot_ptr, o_ptr, scale, N_ITEMS,
    sq_b, sq_h, sk_b, sk_h, sv_b, sv_h, sa_b, sb_b, ss_s, ss_h, ss_k, ss_v, so_b, so_h,
    HV: tl.constexpr, GROUP: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr,
    STAGES: tl.constexpr,
):  # fmt: skip
    NVB: tl.constexpr = DV // BV
    offs_k = tl.arange(0, DK)
    for item in tl.range(tl.program_id(0), N_ITEMS, tl.num_programs(0), num_stages=STAGES):
        pid_v = item % NVB
        bh = item // NVB
        i_b = (bh // HV).to(tl.int64)
        i_h = bh % HV
        i_kh = i_h // GROUP
        offs_v = pid_v * BV + tl.arange(0, BV)
        slot = tl.load(slot_ptr + i_b).to(tl.int64)
        ok = slot >= 0
        okm = (offs_k[:, None] * 0 + offs_v[None, :] * 0 + slot) >= 0  # [DK, BV] (a real tensor: the
        # CPU interpreter rejects a broadcast scalar mask)
        s_ptrs = (
            state_ptr
            + tl.maximum(slot, 0) * ss_s
            + i_h * ss_h
            + offs_k[:, None] * ss_k
            + offs_v[None, :] * ss_v
        )
        s = tl.load(s_ptrs, mask=okm, other=0.0).to(tl.float32)  # [DK, BV]
        q = tl.load(q_ptr + i_b * sq_b + i_kh * sq_h + offs_k).to(tl.float32)
        k = tl.load(k_ptr + i_b * sk_b + i_kh * sk_h + offs_k).to(tl.float32)
        v = tl.load(v_ptr + i_b * sv_b + i_h * sv_h + offs_v).to(tl.float32)
        a = tl.load(a_ptr + i_b * sa_b + i_h).to(tl.float32)
        b = tl.load(b_ptr + i_b * sb_b + i_h).to(tl.float32)
        g, beta = gate_scalar(
            a, b, tl.load(alog_ptr + i_h).to(tl.float32), tl.load(dtb_ptr + i_h).to(tl.float32)
        )
        q = q * (tl.rsqrt(tl.sum(q * q, 0) + 1e-6) * scale)
        k = k * tl.rsqrt(tl.sum(k * k, 0) + 1e-6)
        eg = tl.exp(g)
        ks = tl.sum(s * k[:, None], 0)
        qs = tl.sum(s * q[:, None], 0)
        qk = tl.sum(q * k, 0)
        delta = (v - eg * ks) * beta
        o = tl.where(ok, eg * qs + qk * delta, 0.0)
        s = s * eg + k[:, None] * delta[None, :]
        tl.store(o_ptr + i_b * so_b + i_h * so_h + offs_v, o.to(o_ptr.dtype.element_ty))
        tl.store(s_ptrs, s.to(state_ptr.dtype.element_ty), mask=okm)


@triton.jit
def _load_item(
    item, q_ptr, k_ptr, v_ptr, a_ptr, b_ptr, state_ptr, slot_ptr, N_ITEMS,
    sq_b, sq_h, sk_b, sk_h, sv_b, sv_h, sa_b, sb_b, ss_s, ss_h, ss_k, ss_v,
    HV: tl.constexpr, GROUP: tl.constexpr, DK: tl.constexpr, BV: tl.constexpr, NVB: tl.constexpr,
):  # fmt: skip
    """Issue every load of work item ``item`` (a dead item past N_ITEMS reads nothing)."""
    live = item < N_ITEMS
    it = tl.minimum(item, N_ITEMS - 1)
    pid_v = it % NVB
    bh = it // NVB
    i_b = (bh // HV).to(tl.int64)
    i_h = bh % HV
    i_kh = i_h // GROUP
    offs_k = tl.arange(0, DK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    slot = tl.where(live, tl.load(slot_ptr + i_b).to(tl.int64), -1)
    okm = (offs_k[:, None] * 0 + offs_v[None, :] * 0 + slot) >= 0  # [DK, BV]
    s_ptrs = (
        state_ptr + tl.maximum(slot, 0) * ss_s + i_h * ss_h + offs_k[:, None] * ss_k + offs_v[None, :] * ss_v
    )
    s = tl.load(s_ptrs, mask=okm, other=0.0)
    q = tl.load(q_ptr + i_b * sq_b + i_kh * sq_h + offs_k)
    k = tl.load(k_ptr + i_b * sk_b + i_kh * sk_h + offs_k)
    v = tl.load(v_ptr + i_b * sv_b + i_h * sv_h + offs_v)
    a = tl.load(a_ptr + i_b * sa_b + i_h)
    b = tl.load(b_ptr + i_b * sb_b + i_h)
    return live, i_b, i_h, offs_v, okm, s_ptrs, s, q, k, v, a, b


@triton.jit
def _decode_prefetch_kernel(
    q_ptr, k_ptr, v_ptr, a_ptr, b_ptr, alog_ptr, dtb_ptr, state_ptr, slot_ptr, o_ptr, scale, N_ITEMS,
    sq_b, sq_h, sk_b, sk_h, sv_b, sv_h, sa_b, sb_b, ss_s, ss_h, ss_k, ss_v, so_b, so_h,
    HV: tl.constexpr, GROUP: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """Persistent loop with the next item's loads issued before the current item's math."""
    NVB: tl.constexpr = DV // BV
    G = tl.num_programs(0)
    nxt = _load_item(
        tl.program_id(0), q_ptr, k_ptr, v_ptr, a_ptr, b_ptr, state_ptr, slot_ptr, N_ITEMS,
        sq_b, sq_h, sk_b, sk_h, sv_b, sv_h, sa_b, sb_b, ss_s, ss_h, ss_k, ss_v, HV, GROUP, DK, BV, NVB,
    )  # fmt: skip
    for item in range(tl.program_id(0), N_ITEMS, G):
        live, i_b, i_h, offs_v, okm, s_ptrs, s, q, k, v, a, b = nxt
        nxt = _load_item(
            item + G, q_ptr, k_ptr, v_ptr, a_ptr, b_ptr, state_ptr, slot_ptr, N_ITEMS,
            sq_b, sq_h, sk_b, sk_h, sv_b, sv_h, sa_b, sb_b, ss_s, ss_h, ss_k, ss_v, HV, GROUP, DK, BV, NVB,
        )  # fmt: skip
        s = s.to(tl.float32)
        q = q.to(tl.float32)
        k = k.to(tl.float32)
        g, beta = gate_scalar(
            a.to(tl.float32), b.to(tl.float32), tl.load(alog_ptr + i_h).to(tl.float32),
            tl.load(dtb_ptr + i_h).to(tl.float32),
        )  # fmt: skip
        q = q * (tl.rsqrt(tl.sum(q * q, 0) + 1e-6) * scale)
        k = k * tl.rsqrt(tl.sum(k * k, 0) + 1e-6)
        eg = tl.exp(g)
        ks = tl.sum(s * k[:, None], 0)
        qs = tl.sum(s * q[:, None], 0)
        qk = tl.sum(q * k, 0)
        delta = (v.to(tl.float32) - eg * ks) * beta
        ok_row = tl.max(okm.to(tl.int32), 0) > 0  # [BV]
        o = tl.where(ok_row, eg * qs + qk * delta, 0.0)
        s = s * eg + k[:, None] * delta[None, :]
        tl.store(o_ptr + i_b * so_b + i_h * so_h + offs_v, o.to(o_ptr.dtype.element_ty))
        tl.store(s_ptrs, s.to(state_ptr.dtype.element_ty), mask=okm)


def prefetch_decode(q, k, v, a, b, A_log, dt_bias, state, slots, layout, cfg):
    bv, warps, per_sm = cfg
    nb, hk, dk = q.shape
    hv, dv = v.shape[1:]
    o = torch.empty(nb, hv, dv, dtype=q.dtype, device=q.device)
    ss = logical_state_strides(state, layout, 1)
    n_items = nb * hv * (dv // bv)
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 2
    grid = (min(n_items, per_sm * sms),)
    _decode_prefetch_kernel[grid](
        q, k, v, a, b, A_log, dt_bias, state, slots, o, dk**-0.5, n_items,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), a.stride(0), b.stride(0),
        *ss, o.stride(0), o.stride(1),
        HV=hv, GROUP=hv // hk, DK=dk, DV=dv, BV=bv, num_warps=warps,
    )  # fmt: skip
    return o


def persistent_decode(q, k, v, a, b, A_log, dt_bias, state, slots, layout, cfg):
    bv, warps, per_sm, stages = cfg
    nb, hk, dk = q.shape
    hv, dv = v.shape[1:]
    o = torch.empty(nb, hv, dv, dtype=q.dtype, device=q.device)
    ss = logical_state_strides(state, layout, 1)
    n_items = nb * hv * (dv // bv)
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 2
    grid = (min(n_items, per_sm * sms),)
    _decode_persistent_kernel[grid](
        q, k, v, a, b, A_log, dt_bias, state, slots, o, dk**-0.5, n_items,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), a.stride(0), b.stride(0),
        *ss, o.stride(0), o.stride(1),
        HV=hv, GROUP=hv // hk, DK=dk, DV=dv, BV=bv, STAGES=stages, num_warps=warps,
    )  # fmt: skip
    return o


def main() -> None:
    from deltaserve.bench.common import device_record, measure_copy_bw, time_cuda_graph
    from deltaserve.ops.gdn.decode import gdn_decode

    rows: list = [dict(kind="device", **device_record())]
    copy_bw = measure_copy_bw()
    rows.append(dict(kind="copy_bw_GBps", value=copy_bw / 1e9))
    hk, hv, d = 16, 32, 128
    for sdt in (torch.bfloat16,):
        for layout in ("kv", "vk"):
            for nb in (64, 256, 512):
                per_layer = nb * hv * d * d * sdt.itemsize
                n_layers = int(min(36, max(2, -(-160e6 // per_layer))))
                qkv = torch.randn(nb, 2 * hk * d + hv * d, device="cuda", dtype=torch.bfloat16)
                q, k, v = torch.split(qkv, [hk * d, hk * d, hv * d], dim=-1)
                q, k, v = q.view(nb, hk, d), k.view(nb, hk, d), v.view(nb, hv, d)
                ab = torch.randn(nb, 2 * hv, device="cuda", dtype=torch.bfloat16)
                a, b = ab[:, :hv], ab[:, hv:]
                A_log = torch.randn(hv, device="cuda") * 0.5
                dt_bias = torch.randn(hv, device="cuda") * 0.5
                slots = torch.arange(1, nb + 1, device="cuda", dtype=torch.int32)
                slots[3] = -1  # one padding row
                shape = (nb + 1, hv, d, d)
                pools = [(torch.randn(shape, device="cuda") * 0.1).to(sdt) for _ in range(n_layers)]
                if layout == "vk":
                    pools = [p.transpose(-1, -2).contiguous() for p in pools]
                ref_pool = pools[0].clone()
                ref_o = gdn_decode(q, k, v, a, b, A_log, dt_bias, state=ref_pool, state_slots=slots,
                                   state_layout=layout)  # fmt: skip
                io = nb * (2 * hk * d * 2 + 2 * hv * d * 2 + 2 * hv * 2)
                nbytes = 2 * per_layer + io

                def record(name, fns, err=None):
                    ms = time_cuda_graph(fns)
                    r = dict(
                        kind="decode",
                        shape=f"B={nb} {str(sdt)[6:]} {layout}",
                        variant=name,
                        us=ms * 1e3,
                        pct_copy=100 * nbytes / (ms * 1e-3) / copy_bw,
                        err=err,
                    )
                    rows.append(r)
                    print(json.dumps(r), flush=True)

                record("shipped", [
                    (lambda p=p: gdn_decode(q, k, v, a, b, A_log, dt_bias, state=p, state_slots=slots,
                                            state_layout=layout)) for p in pools
                ])  # fmt: skip
                variants = [
                    ("persistent", persistent_decode, [(64, 4, 4, 2), (32, 4, 8, 3)]),
                    ("prefetch", prefetch_decode,
                     [(64, 4, 4), (64, 4, 8), (32, 4, 8), (64, 8, 2), (128, 8, 2), (32, 2, 16)]),
                ]  # fmt: skip
                for name, fn, cfgs in variants:
                    for cfg in cfgs:
                        try:
                            test_pool = pools[0].clone()
                            o = fn(q, k, v, a, b, A_log, dt_bias, test_pool, slots, layout, cfg)
                            err = float((o.float() - ref_o.float()).abs().max()) + float(
                                (test_pool.float() - ref_pool.float()).abs().max()
                            )
                            record(f"{name} {cfg}", [
                                (lambda p=p, cfg=cfg, fn=fn: fn(q, k, v, a, b, A_log, dt_bias, p, slots,
                                                                 layout, cfg)) for p in pools
                            ], err)  # fmt: skip
                        except Exception as exc:  # noqa: BLE001
                            rows.append(dict(kind="decode", variant=f"{name} {cfg}", error=str(exc)[:300]))
                            print(rows[-1], flush=True)
                del pools
                torch.cuda.empty_cache()
    json.dump(rows, open(sys.argv[1], "w"), indent=1)


if __name__ == "__main__":
    main()
