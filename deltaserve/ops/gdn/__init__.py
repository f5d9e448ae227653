"""Gated DeltaNet ops: chunked prefill, decode and multi-token decode through a state pool.

Public entry points (same signatures in `reference` and the Triton modules):

- ``gdn_prefill(q, k, v, a, b, A_log, dt_bias, *, cu_seqlens, state, state_slots, has_initial_state,
  state_layout="kv", scale=None) -> o [T, Hv, Dv]``
- ``gdn_decode(q, k, v, a, b, A_log, dt_bias, *, state, state_slots, state_layout="kv", scale=None)
  -> o [B, Hv, Dv]``
- ``gdn_decode_multi(q, k, v, a, b, A_log, dt_bias, *, state, state_slots, intermediate_states=None,
  state_layout="kv", scale=None) -> o [B, T, Hv, Dv]``

CUDA inputs go to the Triton kernels, anything else to the plain-torch reference.
"""

from __future__ import annotations

import torch

from deltaserve.ops.gdn import reference
from deltaserve.ops.gdn.reference import (
    chunk_gated_delta_rule_ref,
    gdn_gating,
    l2norm,
    recurrent_gated_delta_rule_ref,
)

__all__ = [
    "gdn_prefill",
    "gdn_decode",
    "gdn_decode_multi",
    "gdn_gating",
    "l2norm",
    "chunk_gated_delta_rule_ref",
    "recurrent_gated_delta_rule_ref",
]


def gdn_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor,
    state: torch.Tensor,
    state_slots: torch.Tensor,
    has_initial_state: torch.Tensor,
    state_layout: str = "kv",
    scale: float | None = None,
) -> torch.Tensor:
    """Varlen GDN prefill with fused gating / l2norm / GVA, state through a pool.

    q, k [T, Hk, Dk]; v [T, Hv, Dv] (row strides free, last dim contiguous); a, b [T, Hv];
    A_log, dt_bias [Hv]; cu_seqlens [B+1] int; state [S, Hv, Dk, Dv] ("kv") or [S, Hv, Dv, Dk] ("vk"),
    fp32/bf16, any strides; state_slots [B] int, distinct, each below S (negative = no pool state: the
    sequence starts from zero whatever its flag and its final state is not written); has_initial_state
    [B] bool. Returns o [T, Hv, Dv] in q.dtype. Final states are written to state[state_slots[b]] in
    place. On CUDA no host sync: slot values are not checked there (the CPU path raises ValueError for a
    slot >= S), so the caller owns their range.
    """
    if q.is_cuda:
        from deltaserve.ops.gdn.prefill import gdn_prefill as impl
    else:
        impl = reference.gdn_prefill
    return impl(
        q,
        k,
        v,
        a,
        b,
        A_log,
        dt_bias,
        cu_seqlens=cu_seqlens,
        state=state,
        state_slots=state_slots,
        has_initial_state=has_initial_state,
        state_layout=state_layout,
        scale=scale,
    )


def gdn_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    *,
    state: torch.Tensor,
    state_slots: torch.Tensor,
    state_layout: str = "kv",
    scale: float | None = None,
) -> torch.Tensor:
    """One decode token per sequence; state updated in place.

    q, k [B, Hk, Dk]; v [B, Hv, Dv]; a, b [B, Hv]; A_log, dt_bias [Hv]; state pool as in gdn_prefill;
    state_slots [B] int (negative = padding: no state write, output row zeros; below S, unchecked on
    CUDA as in gdn_prefill). Returns o [B, Hv, Dv] in q.dtype. CUDA-graph safe (no host sync).
    """
    if q.is_cuda:
        from deltaserve.ops.gdn.decode import gdn_decode as impl
    else:
        impl = reference.gdn_decode
    return impl(
        q,
        k,
        v,
        a,
        b,
        A_log,
        dt_bias,
        state=state,
        state_slots=state_slots,
        state_layout=state_layout,
        scale=scale,
    )


def gdn_decode_multi(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    *,
    state: torch.Tensor,
    state_slots: torch.Tensor,
    intermediate_states: torch.Tensor | None = None,
    state_layout: str = "kv",
    scale: float | None = None,
) -> torch.Tensor:
    """T tokens per sequence (speculative verification); state updated in place.

    q, k [B, T, Hk, Dk]; v [B, T, Hv, Dv]; a, b [B, T, Hv]; state pool as in gdn_prefill;
    state_slots [B] (negative = padding); intermediate_states [B, T, Hv, Dk, Dv] ("kv") or
    [B, T, Hv, Dv, Dk] ("vk") or None: the state after each token.
    Returns o [B, T, Hv, Dv] in q.dtype.
    """
    if q.is_cuda:
        from deltaserve.ops.gdn.decode import gdn_decode_multi as impl
    else:
        impl = reference.gdn_decode_multi
    return impl(
        q,
        k,
        v,
        a,
        b,
        A_log,
        dt_bias,
        state=state,
        state_slots=state_slots,
        intermediate_states=intermediate_states,
        state_layout=state_layout,
        scale=scale,
    )
