"""Plain-torch reference of the decode GEMV: ``y = x Wᵀ (+ b)`` with fp32 accumulation.

- ``linear(x [M, K], weight [N, K], bias [N] | None) -> [M, N]`` in ``x.dtype``: products and sums
  in fp32, bias added in fp32, one rounding at the end (what a bf16 GEMM with fp32 accumulation
  computes, up to the order of the sums).
"""

from __future__ import annotations

import torch

__all__ = ["linear", "check_linear"]


def check_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """One ``ValueError`` naming the tensor for any shape / dtype / device mismatch."""
    if x.dim() != 2:
        raise ValueError(f"x must be [M, K], got {tuple(x.shape)}")
    if weight.dim() != 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight must be [N, K={x.shape[1]}], got {tuple(weight.shape)}")
    if weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(f"weight ({weight.dtype}, {weight.device}) must match x ({x.dtype}, {x.device})")
    if bias is not None and (
        bias.shape != (weight.shape[0],) or bias.dtype != x.dtype or bias.device != x.device
    ):
        raise ValueError(
            f"bias must be [{weight.shape[0]}] {x.dtype} on {x.device}, got {tuple(bias.shape)} {bias.dtype}"
        )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [M, K] @ weight [N, K]ᵀ (+ bias [N])`` in fp32, rounded to ``x.dtype``: ``[M, N]``."""
    check_linear(x, weight, bias)
    y = x.float() @ weight.float().T  # [M, N]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
