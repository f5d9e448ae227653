"""Triton kernels for the depthwise causal conv1d over a slot-indexed state pool.

All tensors are addressed through explicit strides (no copies): x ``[T, D]`` / ``[B, T, D]``, weight
``[D, W]``, the pool as a logical ``[S, D, W-1]`` view (SGLang ``[S, D, W-1]``, vLLM ``[S, W-1, D]``
transposed, or one layer of a bigger pool). Math in fp32. No host sync: graph-capturable.

Prefill is two launches: the conv over all tokens with zeros before each sequence start (no pool
access: the same fast code for every pool layout), then one small program per (sequence, channel
block) that recomputes the first W-1 outputs of sequences with an initial state and writes the
final state back (all its state reads precede its writes, so the in-place update is safe).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deltaserve.ops.conv1d.checks import check_decode, check_prefill
from deltaserve.ops.pdl import gdc_wait, pdl_launch, use_pdl

# launch configs (tuned on H100; benchmarks may override for sweeps)
PREFILL_CONFIG = {"block_t": 16, "block_d": 128, "num_warps": 4}
DECODE_CONFIG = {"block_d": 128, "num_warps": 2}


@triton.jit
def _conv_prefill_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    cu_ptr,
    T,
    D,
    B,
    sx_t,
    sx_d,
    sw_d,
    sw_w,
    so_t,
    so_d,
    W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    LOG_B: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_d = tl.program_id(1)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)  # [BT]
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    t_ok = t < T
    d_ok = d < D
    # sequence start of each token: cu[b] for the largest b in [0, B-1] with cu[b] <= t
    lo = tl.zeros([BLOCK_T], dtype=tl.int32)
    hi = tl.zeros([BLOCK_T], dtype=tl.int32) + (B - 1)
    for _ in tl.static_range(LOG_B):
        mid = (lo + hi + 1) // 2
        go = tl.load(cu_ptr + mid) <= t
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid - 1)
    start = tl.load(cu_ptr + lo).to(tl.int32)  # [BT]

    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    x_tile = x_ptr + t.to(tl.int64)[:, None] * sx_t + d[None, :] * sx_d  # [BT, BD] pointers of tap W-1
    for j in tl.static_range(W):
        p = t - (W - 1) + j  # [BT] input position of tap j; before the start: zero here
        wj = tl.load(w_ptr + d * sw_d + j * sw_w, mask=d_ok, other=0.0).to(tl.float32)  # [BD]
        x_mask = (t_ok & (p >= start))[:, None] & d_ok[None, :]
        xv = tl.load(x_tile - (W - 1 - j) * sx_t, mask=x_mask, other=0.0)
        acc += xv.to(tl.float32) * wj[None, :]
    if ACT:
        acc = acc * tl.sigmoid(acc)
    o_ptr = out_ptr + t.to(tl.int64)[:, None] * so_t + d[None, :] * so_d
    tl.store(o_ptr, acc.to(out_ptr.dtype.element_ty), mask=t_ok[:, None] & d_ok[None, :])


@triton.jit
def _bcast(cond, like):
    """Scalar bool -> vector shaped like ``like`` (the interpreter rejects scalar & vector masks)."""
    return (like * 0 + cond.to(tl.int32)) != 0


@triton.jit
def _input_at(x_ptr, state_ptr, d, d_ok, p, start, slot, use, sx_t, sx_d, ss_s, ss_d, ss_w, W):
    """Input at position p ([BD] fp32): x[p] inside the sequence, else the initial state (or zero)."""
    x_ok = d_ok & _bcast((p >= start) & (slot >= 0), d)
    xv = tl.load(x_ptr + p.to(tl.int64) * sx_t + d * sx_d, mask=x_ok, other=0.0)
    h = p - start + (W - 1)
    h_ok = d_ok & _bcast((p < start) & use, d)
    hv = tl.load(state_ptr + slot * ss_s + d * ss_d + h * ss_w, mask=h_ok, other=0.0)
    return xv.to(tl.float32) + hv.to(tl.float32)


@triton.jit
def _conv_edges_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    state_ptr,
    cu_ptr,
    slot_ptr,
    init_ptr,
    D,
    sx_t,
    sx_d,
    sw_d,
    sw_w,
    so_t,
    so_d,
    ss_s,
    ss_d,
    ss_w,
    W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    d_ok = d < D
    slot = tl.load(slot_ptr + b).to(tl.int64)
    use = (slot >= 0) & (tl.load(init_ptr + b) != 0)
    start = tl.load(cu_ptr + b).to(tl.int32)
    end = tl.load(cu_ptr + b + 1).to(tl.int32)
    # a state element is loaded and stored only by the thread owning its d, loads first: the
    # in-place update needs no barrier
    if use:  # redo the first W-1 outputs with the initial state as history
        for i in tl.static_range(W - 1):
            tok = start + i
            acc = tl.zeros([BLOCK_D], dtype=tl.float32)
            if HAS_BIAS:
                acc += tl.load(b_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
            for j in tl.static_range(W):
                wj = tl.load(w_ptr + d * sw_d + j * sw_w, mask=d_ok, other=0.0).to(tl.float32)
                xv = _input_at(
                    x_ptr,
                    state_ptr,
                    d,
                    d_ok,
                    tok - (W - 1) + j,
                    start,
                    slot,
                    use,
                    sx_t,
                    sx_d,
                    ss_s,
                    ss_d,
                    ss_w,
                    W,
                )
                acc += xv * wj
            if ACT:
                acc = acc * tl.sigmoid(acc)
            o_ok = d_ok & _bcast(tok < end, d)
            tl.store(
                out_ptr + tok.to(tl.int64) * so_t + d * so_d, acc.to(out_ptr.dtype.element_ty), mask=o_ok
            )
    # final state: the last W-1 inputs (from the initial state when the sequence is shorter)
    c0 = _input_at(
        x_ptr, state_ptr, d, d_ok, end - (W - 1), start, slot, use, sx_t, sx_d, ss_s, ss_d, ss_w, W
    )
    c1 = c0
    c2 = c0
    if W >= 3:
        c1 = _input_at(
            x_ptr, state_ptr, d, d_ok, end - (W - 2), start, slot, use, sx_t, sx_d, ss_s, ss_d, ss_w, W
        )
    if W >= 4:
        c2 = _input_at(
            x_ptr, state_ptr, d, d_ok, end - (W - 3), start, slot, use, sx_t, sx_d, ss_s, ss_d, ss_w, W
        )
    base = state_ptr + slot * ss_s + d * ss_d
    ok = d_ok & _bcast(slot >= 0, d)
    ty = state_ptr.dtype.element_ty
    tl.store(base, c0.to(ty), mask=ok)
    if W >= 3:
        tl.store(base + ss_w, c1.to(ty), mask=ok)
    if W >= 4:
        tl.store(base + 2 * ss_w, c2.to(ty), mask=ok)


@triton.jit
def _conv_decode_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    state_ptr,
    slot_ptr,
    D,
    T,
    sx_b,
    sx_t,
    sx_d,
    sw_d,
    sw_w,
    so_b,
    so_t,
    so_d,
    ss_s,
    ss_d,
    ss_w,
    W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PDL: tl.constexpr,
):
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    d_ok = d < D
    if PDL:
        # wait first, no early trigger: reading the taps before the wait and triggering dependents
        # after the loop made B=256 decode 1.6x slower on an H100 (BENCHMARKS.md, 2026-11-28)
        gdc_wait()
    # taps wa..wd (wd on the new input) and bias
    wc = tl.load(w_ptr + d * sw_d + (W - 2) * sw_w, mask=d_ok, other=0.0).to(tl.float32)
    wd = tl.load(w_ptr + d * sw_d + (W - 1) * sw_w, mask=d_ok, other=0.0).to(tl.float32)
    wb = tl.zeros([BLOCK_D], dtype=tl.float32)
    wa = tl.zeros([BLOCK_D], dtype=tl.float32)
    if W >= 3:
        wb = tl.load(w_ptr + d * sw_d + (W - 3) * sw_w, mask=d_ok, other=0.0).to(tl.float32)
    if W >= 4:
        wa = tl.load(w_ptr + d * sw_d + (W - 4) * sw_w, mask=d_ok, other=0.0).to(tl.float32)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    slot = tl.load(slot_ptr + b).to(tl.int64)
    ok = d_ok & _bcast(slot >= 0, d)
    base = state_ptr + slot * ss_s + d * ss_d
    # history oldest -> newest: h0 (k=W-4), h1 (k=W-3), h2 (k=W-2)
    h2 = tl.load(base + (W - 2) * ss_w, mask=ok, other=0.0).to(tl.float32)
    h1 = tl.zeros([BLOCK_D], dtype=tl.float32)
    h0 = tl.zeros([BLOCK_D], dtype=tl.float32)
    if W >= 3:
        h1 = tl.load(base + (W - 3) * ss_w, mask=ok, other=0.0).to(tl.float32)
    if W >= 4:
        h0 = tl.load(base + (W - 4) * ss_w, mask=ok, other=0.0).to(tl.float32)
    x_row = x_ptr + b.to(tl.int64) * sx_b + d * sx_d
    o_row = out_ptr + b.to(tl.int64) * so_b + d * so_d
    for t in range(T):
        xv = tl.load(x_row + t * sx_t, mask=ok, other=0.0).to(tl.float32)
        acc = bias + h0 * wa + h1 * wb + h2 * wc + xv * wd
        if ACT:
            acc = acc * tl.sigmoid(acc)
        acc = tl.where(ok, acc, 0.0)  # padding rows (slot < 0) get zeros
        tl.store(o_row + t * so_t, acc.to(out_ptr.dtype.element_ty), mask=d_ok)
        h0 = h1
        h1 = h2
        h2 = xv
    ty = state_ptr.dtype.element_ty
    tl.store(base + (W - 2) * ss_w, h2.to(ty), mask=ok)
    if W >= 3:
        tl.store(base + (W - 3) * ss_w, h1.to(ty), mask=ok)
    if W >= 4:
        tl.store(base + (W - 4) * ss_w, h0.to(ty), mask=ok)


def _act_flag(activation: str | None) -> bool:
    return activation in ("silu", "swish")


def causal_conv1d_prefill(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    cu_seqlens: torch.Tensor,
    conv_state: torch.Tensor,
    state_slots: torch.Tensor,
    has_initial_state: torch.Tensor,
    activation: str | None = "silu",
) -> torch.Tensor:
    """Triton varlen prefill; same contract as ``reference.causal_conv1d_prefill``."""
    w = check_prefill(x, weight, bias, cu_seqlens, conv_state, state_slots, has_initial_state, activation)
    t, d = x.shape
    b = cu_seqlens.shape[0] - 1
    out = torch.empty_like(x)  # [T, D]
    bias_arg = bias if bias is not None else weight
    if t > 0:
        block_t, block_d = PREFILL_CONFIG["block_t"], PREFILL_CONFIG["block_d"]
        grid = (triton.cdiv(t, block_t), triton.cdiv(d, block_d))
        _conv_prefill_kernel[grid](
            x, weight, bias_arg, out, cu_seqlens, t, d, b,
            x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), out.stride(0), out.stride(1),
            W=w, HAS_BIAS=bias is not None, ACT=_act_flag(activation), LOG_B=max(1, b.bit_length()),
            BLOCK_T=block_t, BLOCK_D=block_d, num_warps=PREFILL_CONFIG["num_warps"],
        )  # fmt: skip
    if b > 0:
        block_d = 256
        # with T == 0 (only empty sequences) x and out have no storage: pass the pool instead, every
        # access to them is masked off then
        x_arg, out_arg = (x, out) if t > 0 else (conv_state, conv_state)
        _conv_edges_kernel[(b, triton.cdiv(d, block_d))](
            x_arg, weight, bias_arg, out_arg, conv_state, cu_seqlens, state_slots, has_initial_state, d,
            x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), out.stride(0), out.stride(1),
            conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
            W=w, HAS_BIAS=bias is not None, ACT=_act_flag(activation), BLOCK_D=block_d, num_warps=2,
        )  # fmt: skip
    return out


def causal_conv1d_decode_multi(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    conv_state: torch.Tensor,
    state_slots: torch.Tensor,
    activation: str | None = "silu",
) -> torch.Tensor:
    """Triton multi-token update ``x [B, T, D]``; same contract as the reference."""
    w = check_decode(x, 3, weight, bias, conv_state, state_slots, activation)
    bsz, t, d = x.shape
    out = torch.empty_like(x)  # [B, T, D]
    if bsz == 0 or t == 0 or d == 0:
        return out.zero_()
    block_d = min(DECODE_CONFIG["block_d"], triton.next_power_of_2(d))
    pdl = use_pdl(x)
    _conv_decode_kernel[(bsz, triton.cdiv(d, block_d))](
        x, weight, bias if bias is not None else weight, out, conv_state, state_slots,
        d, t, x.stride(0), x.stride(1), x.stride(2), weight.stride(0), weight.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        W=w, HAS_BIAS=bias is not None, ACT=_act_flag(activation), BLOCK_D=block_d, PDL=pdl,
        num_warps=DECODE_CONFIG["num_warps"], **pdl_launch(pdl),
    )  # fmt: skip
    return out


def causal_conv1d_decode(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    conv_state: torch.Tensor,
    state_slots: torch.Tensor,
    activation: str | None = "silu",
) -> torch.Tensor:
    """Triton one-token update ``x [B, D]``; same contract as the reference."""
    check_decode(x, 2, weight, bias, conv_state, state_slots, activation)
    return causal_conv1d_decode_multi(
        x[:, None, :], weight, bias, conv_state=conv_state, state_slots=state_slots, activation=activation
    )[:, 0, :]
