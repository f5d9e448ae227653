"""Rotary embedding: cos/sin tables from positions (partial RoPE; Qwen3.5 interleaved mRoPE)."""

from __future__ import annotations

import torch
from torch import nn

from deltaserve.ops.rope import rope_cos_sin


class RotaryEmbedding(nn.Module):
    """Computes `(cos, sin) [T, rotary_dim]` once per forward; layers apply them to q and k."""

    def __init__(
        self,
        rotary_dim: int,
        theta: float,
        *,
        mrope_section: tuple[int, ...] | None = None,
        mrope_interleaved: bool = False,
    ) -> None:
        super().__init__()
        self.rotary_dim = rotary_dim
        self.theta = theta
        self.mrope_section = list(mrope_section) if mrope_section else None
        self.mrope_interleaved = mrope_interleaved

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions [T] or [3, T] -> cos, sin [T, rotary_dim] fp32
        return rope_cos_sin(
            positions,
            self.rotary_dim,
            self.theta,
            mrope_section=self.mrope_section,
            mrope_interleaved=self.mrope_interleaved,
        )
