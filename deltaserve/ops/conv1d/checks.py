"""Argument checks for the conv1d ops (no host sync); each raises ``ValueError`` naming the argument."""

from __future__ import annotations

import torch

ACTIVATIONS = (None, "silu", "swish")


def _is_int(t: torch.Tensor) -> bool:
    return not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool


def check_common(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    conv_state: torch.Tensor,
    activation: str | None,
) -> int:
    """Checks weight/bias/pool against ``x [..., D]``; returns the width ``W``."""
    d = x.shape[-1]
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor, got {x.dtype}")
    if weight.dim() != 2 or weight.shape[0] != d:
        raise ValueError(f"weight must be [D={d}, W], got {tuple(weight.shape)}")
    w = weight.shape[1]
    if not 2 <= w <= 4:
        raise ValueError(f"weight width W must be in 2..4, got {w}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != d):
        raise ValueError(f"bias must be [D={d}] or None, got {tuple(bias.shape)}")
    if conv_state.dim() != 3 or conv_state.shape[1] != d or conv_state.shape[2] != w - 1:
        raise ValueError(
            f"conv_state must be [S, D={d}, W-1={w - 1}] (logical view), got {tuple(conv_state.shape)}"
        )
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    for name, t in (("weight", weight), ("bias", bias), ("conv_state", conv_state)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}, got {t.device}")
    return w


def check_slots(state_slots: torch.Tensor, b: int, device: torch.device) -> None:
    if state_slots.dim() != 1 or state_slots.shape[0] != b or not _is_int(state_slots):
        raise ValueError(
            f"state_slots must be an integer tensor [B={b}], got {state_slots.dtype} {tuple(state_slots.shape)}"
        )
    if state_slots.device != device:
        raise ValueError(f"state_slots must be on x's device {device}, got {state_slots.device}")


def check_prefill(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cu_seqlens: torch.Tensor,
    conv_state: torch.Tensor,
    state_slots: torch.Tensor,
    has_initial_state: torch.Tensor,
    activation: str | None,
) -> int:
    """Shape checks of ``causal_conv1d_prefill``; returns ``W``."""
    if x.dim() != 2:
        raise ValueError(f"x must be [T, D], got {tuple(x.shape)}")
    w = check_common(x, weight, bias, conv_state, activation)
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 1 or not _is_int(cu_seqlens):
        raise ValueError(
            f"cu_seqlens must be an integer tensor [B+1], got {cu_seqlens.dtype} {tuple(cu_seqlens.shape)}"
        )
    if cu_seqlens.device != x.device:
        raise ValueError(f"cu_seqlens must be on x's device {x.device}, got {cu_seqlens.device}")
    b = cu_seqlens.shape[0] - 1
    check_slots(state_slots, b, x.device)
    if has_initial_state.dim() != 1 or has_initial_state.shape[0] != b:
        raise ValueError(f"has_initial_state must be [B={b}], got {tuple(has_initial_state.shape)}")
    if has_initial_state.device != x.device:
        raise ValueError(
            f"has_initial_state must be on x's device {x.device}, got {has_initial_state.device}"
        )
    return w


def check_decode(
    x: torch.Tensor,
    ndim: int,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    conv_state: torch.Tensor,
    state_slots: torch.Tensor,
    activation: str | None,
) -> int:
    """Shape checks of the decode ops (``x [B, D]`` when ``ndim == 2``, ``[B, T, D]`` when 3)."""
    if x.dim() != ndim:
        raise ValueError(f"x must be {'[B, D]' if ndim == 2 else '[B, T, D]'}, got {tuple(x.shape)}")
    w = check_common(x, weight, bias, conv_state, activation)
    check_slots(state_slots, x.shape[0], x.device)
    return w
