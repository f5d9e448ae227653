"""Plain-torch reference depthwise causal conv1d (fp32 math) with a slot-indexed state pool.

For channel ``d`` and width ``W``: ``y[t] = act(bias + sum_{j<W} weight[d, j] * x[t - (W-1) + j])``, where
inputs before the sequence start come from the conv state (the last ``W-1`` inputs seen, oldest
first) or are zero. Equals HF's ``F.conv1d(x, w[:, None], b, padding=W-1, groups=D)[..., :L]``.

The state pool is given in LOGICAL layout ``[S, D, W-1]`` with any strides: SGLang's pool directly,
vLLM's ``[S, W-1, D]`` pool as ``pool.transpose(1, 2)``, or one layer of a ``[L, S, ...]`` tensor.
A slot index < 0 means padding: no state read or write.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deltaserve.ops.conv1d.checks import check_decode, check_prefill
from deltaserve.ops.pool_slots import host_slots

__all__ = ["causal_conv1d_prefill", "causal_conv1d_decode", "causal_conv1d_decode_multi"]


def _act(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    return F.silu(y) if activation in ("silu", "swish") else y


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
    """Varlen causal conv over flattened sequences; reads and writes the state pool in place.

    Args:
        x: ``[T, D]`` flattened tokens of ``B`` sequences.
        weight: ``[D, W]``, ``W`` in 2..4. bias: ``[D]`` or None.
        cu_seqlens: ``[B+1]`` int, ``cu_seqlens[0] == 0``, non-decreasing, ``cu_seqlens[B] == T``
            (empty sequences allowed).
        conv_state: ``[S, D, W-1]`` logical view of the pool, any strides.
        state_slots: ``[B]`` int; ``< 0`` = no state read or write.
        has_initial_state: ``[B]`` bool; False = zeros as history.
        activation: ``"silu"`` / ``"swish"`` or None.
    Returns:
        ``[T, D]`` in ``x.dtype``. The pool row of each sequence with a slot >= 0 receives its last
        ``W-1`` inputs (taking from the initial state when the sequence is shorter), in pool dtype.
    """
    w = check_prefill(x, weight, bias, cu_seqlens, conv_state, state_slots, has_initial_state, activation)
    b = cu_seqlens.shape[0] - 1
    cu = [int(c) for c in cu_seqlens.tolist()]
    if cu[0] != 0 or cu[-1] != x.shape[0] or any(cu[i + 1] < cu[i] for i in range(b)):
        raise ValueError(f"cu_seqlens must start at 0, be non-decreasing and end at T={x.shape[0]}")
    slots = host_slots(state_slots, conv_state.shape[0])
    init = [bool(h) for h in has_initial_state.tolist()]

    d = x.shape[1]
    wf = weight.float()  # [D, W]
    bf = None if bias is None else bias.float()
    out = torch.empty_like(x)  # [T, D]
    for i in range(b):
        start, end = cu[i], cu[i + 1]
        slot = slots[i]
        if slot >= 0 and init[i]:
            hist = conv_state[slot].float()  # [D, W-1]
        else:
            hist = torch.zeros(d, w - 1, dtype=torch.float32, device=x.device)
        seq = torch.cat((hist, x[start:end].float().t()), dim=1)  # [D, W-1+L]
        if end > start:
            y = F.conv1d(seq[None], wf[:, None, :], bf, groups=d)[0]  # [D, L]
            out[start:end] = _act(y, activation).t().to(x.dtype)
        if slot >= 0:
            conv_state[slot].copy_(seq[:, seq.shape[1] - (w - 1) :])
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
    """One token per sequence: shift the state in place and convolve.

    Args:
        x: ``[B, D]``. weight ``[D, W]``, bias ``[D]`` or None.
        conv_state: ``[S, D, W-1]`` logical pool view, any strides; always used as history.
        state_slots: ``[B]`` int; ``< 0`` = padding row: state untouched, output row zeros.
    Returns:
        ``[B, D]`` in ``x.dtype``.
    """
    check_decode(x, 2, weight, bias, conv_state, state_slots, activation)
    return causal_conv1d_decode_multi(
        x[:, None, :], weight, bias, conv_state=conv_state, state_slots=state_slots, activation=activation
    )[:, 0, :]


def causal_conv1d_decode_multi(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    conv_state: torch.Tensor,
    state_slots: torch.Tensor,
    activation: str | None = "silu",
) -> torch.Tensor:
    """``T`` new tokens per sequence (speculative verification): like ``T`` decode steps in a row.

    Args:
        x: ``[B, T, D]``. conv_state ``[S, D, W-1]`` logical pool view. state_slots ``[B]`` (< 0: padding,
            state untouched, output zeros).
    Returns:
        ``[B, T, D]`` in ``x.dtype``; each used state row ends holding the last ``W-1`` inputs.
    """
    w = check_decode(x, 3, weight, bias, conv_state, state_slots, activation)
    b, t, d = x.shape
    slots = host_slots(state_slots, conv_state.shape[0])
    wf = weight.float()  # [D, W]
    bf = None if bias is None else bias.float()
    out = torch.zeros_like(x)  # [B, T, D]
    for i in range(b):
        slot = slots[i]
        if slot < 0:
            continue
        seq = torch.cat((conv_state[slot].float(), x[i].float().t()), dim=1)  # [D, W-1+T]
        if t > 0:
            y = F.conv1d(seq[None], wf[:, None, :], bf, groups=d)[0]  # [D, T]
            out[i] = _act(y, activation).t().to(x.dtype)
        conv_state[slot].copy_(seq[:, seq.shape[1] - (w - 1) :])
    return out
