"""Argument checks for the norm ops (no host sync); each raises ``ValueError`` naming the argument."""

from __future__ import annotations

import torch


def check_weight(x: torch.Tensor, weight: torch.Tensor, name_x: str = "x") -> None:
    if x.dim() < 1:
        raise ValueError(f"{name_x} must have at least one dimension, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name_x} must be a floating tensor, got {x.dtype}")
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(
            f"weight must have shape [{x.shape[-1]}] (last dim of {name_x}), got {tuple(weight.shape)}"
        )
    if weight.device != x.device:
        raise ValueError(f"weight must be on {name_x}'s device {x.device}, got {weight.device}")


def check_eps(eps: float) -> None:
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0, got {eps}")


def check_same(x: torch.Tensor, other: torch.Tensor, name: str, *, dtype: bool) -> None:
    """``other`` must match ``x`` in shape and device (and dtype when asked)."""
    if other.shape != x.shape:
        raise ValueError(f"{name} shape {tuple(other.shape)} != x shape {tuple(x.shape)}")
    if dtype and other.dtype != x.dtype:
        raise ValueError(f"{name} dtype {other.dtype} != x dtype {x.dtype}")
    if other.device != x.device:
        raise ValueError(f"{name} must be on x's device {x.device}, got {other.device}")


def rows_view(t: torch.Tensor, name: str) -> tuple[torch.Tensor, int, int]:
    """View ``t [..., H]`` as ``[N0, N1, H]`` without copying (unit stride on H required).

    Returns the view and ``(N0, N1)``. Raises ``ValueError`` naming ``t`` if no such view exists.
    """
    h = t.shape[-1]
    if h > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have stride 1 on its last dim, got strides {tuple(t.stride())}")
    if t.dim() == 1:
        return t.view(1, 1, h), 1, 1
    if t.dim() == 2:
        return t.unsqueeze(0), 1, t.shape[0]
    lead = t.shape[:-2]
    n0 = 1
    for s in lead:
        n0 *= s
    try:
        v = t.view(n0, t.shape[-2], h)
    except RuntimeError as e:
        raise ValueError(f"{name} leading dims cannot be merged without a copy: strides {t.stride()}") from e
    return v, n0, t.shape[-2]


def check_fp8_group(x: torch.Tensor, group: int, name_x: str = "x") -> None:
    """The fp8-output norms quantise ``group``-wide slices of the last dim: it must divide ``H``."""
    if x.dim() < 1 or x.shape[-1] == 0 or x.shape[-1] % group:
        raise ValueError(
            f"{name_x} last dim (H) must be a positive multiple of {group} for fp8 output, "
            f"got shape {tuple(x.shape)}"
        )
