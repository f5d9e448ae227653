"""Argument checks shared by the reference and the Triton entry points of the GDN ops.

Every check raises ``ValueError`` naming the offending argument. Nothing here copies or syncs with
the device except where noted (``cu_seqlens`` consistency is checked only on CPU tensors).
"""

from __future__ import annotations

import torch

STATE_LAYOUTS = ("kv", "vk")
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_STATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _fail(name: str, msg: str) -> None:
    raise ValueError(f"{name}: {msg}")


def check_float(name: str, x: torch.Tensor, ndim: int) -> None:
    if not isinstance(x, torch.Tensor):
        _fail(name, f"expected a tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        _fail(name, f"expected {ndim} dims, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        _fail(name, f"expected float32/bfloat16/float16, got {x.dtype}")


def check_inner_contiguous(name: str, x: torch.Tensor) -> None:
    """Kernels need unit stride on the last dim; other strides are free (views of fused projections)."""
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        _fail(name, f"last dim must have stride 1 (got strides {tuple(x.stride())})")


def check_layout(state_layout: str) -> None:
    if state_layout not in STATE_LAYOUTS:
        _fail("state_layout", f"expected one of {STATE_LAYOUTS}, got {state_layout!r}")


def check_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int]:
    """q, k [..., Hk, Dk]; v [..., Hv, Dv] with identical leading dims. Returns (Hk, Hv, Dk, Dv)."""
    if tuple(k.shape) != tuple(q.shape):
        _fail("k", f"shape {tuple(k.shape)} must equal q's {tuple(q.shape)}")
    if tuple(v.shape[:-2]) != tuple(q.shape[:-2]):
        _fail("v", f"leading dims {tuple(v.shape[:-2])} must equal q's {tuple(q.shape[:-2])}")
    hk, dk = q.shape[-2], q.shape[-1]
    hv, dv = v.shape[-2], v.shape[-1]
    if hk == 0 or hv % hk != 0:
        _fail("v", f"value heads Hv={hv} must be a multiple of key heads Hk={hk}")
    return hk, hv, dk, dv


def check_gate_inputs(
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    lead: tuple[int, ...],
    hv: int,
) -> None:
    """a, b [*lead, Hv]; A_log, dt_bias [Hv]."""
    for name, x in (("a", a), ("b", b)):
        check_float(name, x, len(lead) + 1)
        if tuple(x.shape) != (*lead, hv):
            _fail(name, f"expected shape {(*lead, hv)}, got {tuple(x.shape)}")
    for name, x in (("A_log", A_log), ("dt_bias", dt_bias)):
        check_float(name, x, 1)
        if x.shape[0] != hv:
            _fail(name, f"expected shape ({hv},), got {tuple(x.shape)}")


def state_head_shape(state_layout: str, dk: int, dv: int) -> tuple[int, int]:
    return (dk, dv) if state_layout == "kv" else (dv, dk)


def check_state(
    name: str, state: torch.Tensor, lead_ndim: int, hv: int, dk: int, dv: int, state_layout: str
) -> None:
    """state [*lead, Hv, Dk, Dv] ("kv") or [*lead, Hv, Dv, Dk] ("vk"); any strides, float dtype."""
    if not isinstance(state, torch.Tensor):
        _fail(name, f"expected a tensor, got {type(state).__name__}")
    if state.dim() != lead_ndim + 3:
        _fail(name, f"expected {lead_ndim + 3} dims, got shape {tuple(state.shape)}")
    if state.dtype not in _STATE_DTYPES:
        _fail(name, f"expected float32/bfloat16/float16, got {state.dtype}")
    want = (hv, *state_head_shape(state_layout, dk, dv))
    if tuple(state.shape[lead_ndim:]) != want:
        _fail(name, f"per-slot shape must be {want} for layout {state_layout!r}, got {tuple(state.shape)}")


def check_slots(name: str, slots: torch.Tensor, n: int) -> None:
    if not isinstance(slots, torch.Tensor) or slots.dim() != 1 or slots.shape[0] != n:
        _fail(name, f"expected a 1-D tensor of {n} entries, got {getattr(slots, 'shape', slots)}")
    if slots.dtype not in (torch.int32, torch.int64):
        _fail(name, f"expected int32/int64, got {slots.dtype}")


def check_same_device(device: torch.device, **tensors: torch.Tensor) -> None:
    for name, x in tensors.items():
        if x is not None and x.device != device:
            _fail(name, f"on {x.device}, expected {device}")


def check_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    cu_seqlens: torch.Tensor,
    state: torch.Tensor,
    state_slots: torch.Tensor,
    has_initial_state: torch.Tensor,
    state_layout: str,
) -> tuple[int, int, int, int, int]:
    """Checks gdn_prefill's arguments; returns (B, Hk, Hv, Dk, Dv)."""
    check_layout(state_layout)
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_float(name, x, 3)
    hk, hv, dk, dv = check_heads(q, k, v)
    t = q.shape[0]
    check_gate_inputs(a, b, A_log, dt_bias, (t,), hv)
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        _fail("cu_seqlens", "expected a 1-D int tensor of B+1 >= 2 offsets")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        _fail("cu_seqlens", f"expected int32/int64, got {cu_seqlens.dtype}")
    n = cu_seqlens.shape[0] - 1
    if cu_seqlens.device.type == "cpu":
        if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != t:
            _fail("cu_seqlens", f"must start at 0 and end at T={t}")
        if bool((cu_seqlens[1:] < cu_seqlens[:-1]).any()):
            _fail("cu_seqlens", "must be non-decreasing")
    check_state("state", state, 1, hv, dk, dv, state_layout)
    check_slots("state_slots", state_slots, n)
    if not isinstance(has_initial_state, torch.Tensor) or tuple(has_initial_state.shape) != (n,):
        _fail("has_initial_state", f"expected a 1-D tensor of {n} entries")
    if has_initial_state.dtype != torch.bool:
        _fail("has_initial_state", f"expected bool, got {has_initial_state.dtype}")
    check_same_device(
        q.device,
        k=k,
        v=v,
        a=a,
        b=b,
        A_log=A_log,
        dt_bias=dt_bias,
        cu_seqlens=cu_seqlens,
        state=state,
        state_slots=state_slots,
        has_initial_state=has_initial_state,
    )
    return n, hk, hv, dk, dv


def check_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    state: torch.Tensor,
    state_slots: torch.Tensor,
    state_layout: str,
    n_lead: int,
    intermediate_states: torch.Tensor | None = None,
) -> tuple[int, int, int, int, int]:
    """Checks gdn_decode (n_lead=1) / gdn_decode_multi (n_lead=2) arguments; returns (B, Hk, Hv, Dk, Dv)."""
    check_layout(state_layout)
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_float(name, x, n_lead + 2)
    hk, hv, dk, dv = check_heads(q, k, v)
    lead = tuple(q.shape[:n_lead])
    check_gate_inputs(a, b, A_log, dt_bias, lead, hv)
    check_state("state", state, 1, hv, dk, dv, state_layout)
    check_slots("state_slots", state_slots, lead[0])
    if intermediate_states is not None:
        check_state("intermediate_states", intermediate_states, 2, hv, dk, dv, state_layout)
        if tuple(intermediate_states.shape[:2]) != lead:
            _fail(
                "intermediate_states", f"leading dims must be {lead}, got {tuple(intermediate_states.shape)}"
            )
    check_same_device(
        q.device,
        k=k,
        v=v,
        a=a,
        b=b,
        A_log=A_log,
        dt_bias=dt_bias,
        state=state,
        state_slots=state_slots,
        intermediate_states=intermediate_states,
    )
    return lead[0], hk, hv, dk, dv
