"""Rotary embedding: cos/sin tables from positions (partial RoPE; Qwen3.5 interleaved mRoPE)."""

from __future__ import annotations

import torch
from torch import nn

from deltaserve.ops.rope import rope_cos_sin_lookup, rope_cos_sin_table, rope_table_columns


class RotaryEmbedding(nn.Module):
    """Gathers `(cos, sin) [T, rotary_dim]` once per forward from a table built at init; layers apply
    them to q and k.

    The table (`cos_sin_cache [max_positions, 2 * rotary_dim]` fp32, a non-persistent buffer: not a
    checkpoint tensor) covers every position the model accepts, so the forward is one gather (two for
    `[3, T]` mRoPE positions) with no allocation beyond its `[T]`-sized output: CUDA-graph safe.
    Positions must lie in `[0, max_positions)`.
    """

    def __init__(
        self,
        rotary_dim: int,
        theta: float,
        *,
        max_positions: int,
        mrope_section: tuple[int, ...] | None = None,
        mrope_interleaved: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.rotary_dim = rotary_dim
        self.theta = theta
        self.max_positions = max_positions
        self.mrope_section = list(mrope_section) if mrope_section else None
        self.mrope_interleaved = mrope_interleaved
        table = rope_cos_sin_table(max_positions, rotary_dim, theta, device=device)  # [P, 2rd]
        self.register_buffer("cos_sin_cache", table, persistent=False)
        columns = None
        if self.mrope_section is not None:
            columns = rope_table_columns(rotary_dim, self.mrope_section, mrope_interleaved).to(table.device)
        self.register_buffer("mrope_columns", columns, persistent=False)  # [2rd] int64 or None

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions [T] or [3, T] -> cos, sin [T, rotary_dim] fp32 (views of one [T, 2rd] gather)
        if positions.dim() == 2 and self.mrope_columns is None:
            raise ValueError(f"positions must be [T] without mrope_section, got {tuple(positions.shape)}")
        return rope_cos_sin_lookup(self.cos_sin_cache, positions, mrope_columns=self.mrope_columns)
