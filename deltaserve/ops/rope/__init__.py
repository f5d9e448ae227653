"""Rotary position embedding ops (partial RoPE, Qwen3.5 interleaved mRoPE) and the fused q/k
norm + RoPE + KV-cache write of gated attention.

- ``rope_cos_sin(positions [T] | [3, T], rotary_dim, theta, *, mrope_section=None,
  mrope_interleaved=False) -> (cos, sin)`` each ``[T, rotary_dim]`` fp32 (plain torch on every
  device; build it once per forward and share it across layers)
- ``rope_cos_sin_table(max_positions, rotary_dim, theta, *, device=None) -> [P, 2 * rotary_dim]`` fp32
  (``cos | sin`` of every position, built once) and ``rope_cos_sin_lookup(table, positions, *,
  mrope_columns=None) -> (cos, sin)``: the same tables as ``rope_cos_sin`` by one gather per forward
  (``rope_table_columns`` gives the mRoPE column axes)
- ``apply_rotary(x [T, H, D], cos, sin) -> [T, H, D]``
- ``qk_norm_rope(q, k, q_weight, k_weight, cos, sin, eps, *, zero_centered=True, v=None,
  k_cache=None, v_cache=None, slot_mapping=None) -> (q_out, k_out)``

CUDA inputs go to the Triton kernels (``kernels.py``), anything else to the fp32 torch reference
(``reference.py``); see the reference docstrings for the full contract.
"""

from __future__ import annotations

import torch

from deltaserve.ops.rope import reference
from deltaserve.ops.rope.reference import (
    rope_cos_sin,
    rope_cos_sin_lookup,
    rope_cos_sin_table,
    rope_table_columns,
)

__all__ = [
    "rope_cos_sin",
    "rope_cos_sin_table",
    "rope_table_columns",
    "rope_cos_sin_lookup",
    "apply_rotary",
    "qk_norm_rope",
]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Neox rotary on the first ``rd`` dims of each head: ``x [T, H, D]``, ``cos, sin [T, rd]``."""
    impl = _kernels() if x.is_cuda else reference
    return impl.apply_rotary(x, cos, sin)


def qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float,
    *,
    zero_centered: bool = True,
    v: torch.Tensor | None = None,
    k_cache: torch.Tensor | None = None,
    v_cache: torch.Tensor | None = None,
    slot_mapping: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm of ``q [T, Hq, D]`` / ``k [T, Hkv, D]`` then partial RoPE; optionally writes
    the rotated K and ``v`` into ``k_cache``/``v_cache [num_blocks, block_size, Hkv, D]`` at
    ``slot_mapping [T]`` (``< 0`` skipped). Returns ``(q_out, k_out)``."""
    impl = _kernels() if q.is_cuda else reference
    return impl.qk_norm_rope(
        q,
        k,
        q_weight,
        k_weight,
        cos,
        sin,
        eps,
        zero_centered=zero_centered,
        v=v,
        k_cache=k_cache,
        v_cache=v_cache,
        slot_mapping=slot_mapping,
    )


def _kernels():
    from deltaserve.ops.rope import kernels

    return kernels
