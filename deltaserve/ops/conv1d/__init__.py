"""Depthwise causal conv1d ops over a slot-indexed conv-state pool.

- ``causal_conv1d_prefill(x [T, D], weight [D, W], bias, *, cu_seqlens, conv_state, state_slots,
  has_initial_state, activation="silu") -> [T, D]``
- ``causal_conv1d_decode(x [B, D], weight, bias, *, conv_state, state_slots, activation) -> [B, D]``
- ``causal_conv1d_decode_multi(x [B, T, D], ...) -> [B, T, D]`` (speculative verification)

``conv_state`` is the pool as a logical ``[S, D, W-1]`` view with any strides. CUDA inputs go to the
Triton kernels (``kernels.py``), anything else to the fp32 torch reference (``reference.py``); see
the reference docstrings for the full contract.
"""

from __future__ import annotations

import torch

from deltaserve.ops.conv1d import reference

__all__ = ["causal_conv1d_prefill", "causal_conv1d_decode", "causal_conv1d_decode_multi"]


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
    """Varlen causal conv ``x [T, D] -> [T, D]``; initial/final states through the pool by slot."""
    impl = _kernels() if x.is_cuda else reference
    return impl.causal_conv1d_prefill(
        x,
        weight,
        bias,
        cu_seqlens=cu_seqlens,
        conv_state=conv_state,
        state_slots=state_slots,
        has_initial_state=has_initial_state,
        activation=activation,
    )


def causal_conv1d_decode(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    conv_state: torch.Tensor,
    state_slots: torch.Tensor,
    activation: str | None = "silu",
) -> torch.Tensor:
    """One token per sequence ``x [B, D] -> [B, D]``; state shifted in place (slot < 0: zeros)."""
    impl = _kernels() if x.is_cuda else reference
    return impl.causal_conv1d_decode(
        x, weight, bias, conv_state=conv_state, state_slots=state_slots, activation=activation
    )


def causal_conv1d_decode_multi(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    conv_state: torch.Tensor,
    state_slots: torch.Tensor,
    activation: str | None = "silu",
) -> torch.Tensor:
    """``T`` tokens per sequence ``x [B, T, D] -> [B, T, D]``, like ``T`` decode steps in a row."""
    impl = _kernels() if x.is_cuda else reference
    return impl.causal_conv1d_decode_multi(
        x, weight, bias, conv_state=conv_state, state_slots=state_slots, activation=activation
    )


def _kernels():
    from deltaserve.ops.conv1d import kernels

    return kernels
