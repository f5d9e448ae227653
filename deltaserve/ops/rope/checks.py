"""Argument checks for the rope ops (no host sync); each raises ``ValueError`` naming the argument."""

from __future__ import annotations

import torch


def _is_int(t: torch.Tensor) -> bool:
    return not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool


def check_heads(name: str, x: torch.Tensor, t: int | None = None, d: int | None = None) -> None:
    """``x`` must be a floating ``[T, H, D]`` tensor (optionally with the given T and D)."""
    if x.dim() != 3:
        raise ValueError(f"{name} must be [T, H, D], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got {x.dtype}")
    if t is not None and x.shape[0] != t:
        raise ValueError(f"{name} has T={x.shape[0]}, expected {t}")
    if d is not None and x.shape[2] != d:
        raise ValueError(f"{name} has head dim {x.shape[2]}, expected {d}")


def check_cos_sin(cos: torch.Tensor, sin: torch.Tensor, t: int, d: int) -> int:
    """``cos, sin [T, rd]`` with even ``rd <= d``; returns ``rd``."""
    if cos.dim() != 2 or cos.shape != sin.shape:
        raise ValueError(f"cos and sin must both be [T, rd], got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if cos.shape[0] != t:
        raise ValueError(f"cos has {cos.shape[0]} rows, x has T={t}")
    rd = cos.shape[1]
    if rd % 2 != 0 or rd > d:
        raise ValueError(f"cos rotary_dim {rd} must be even and <= head dim {d}")
    return rd


def check_cache(
    k: torch.Tensor,
    v: torch.Tensor | None,
    k_cache: torch.Tensor | None,
    v_cache: torch.Tensor | None,
    slot_mapping: torch.Tensor | None,
) -> bool:
    """All of ``v, k_cache, v_cache, slot_mapping`` or none; returns whether the cache is written."""
    given = [a is not None for a in (v, k_cache, v_cache, slot_mapping)]
    if not any(given):
        return False
    if not all(given):
        missing = [n for n, g in zip(("v", "k_cache", "v_cache", "slot_mapping"), given) if not g]
        raise ValueError(f"the KV-cache write needs v, k_cache, v_cache and slot_mapping; missing {missing}")
    assert v is not None and k_cache is not None and v_cache is not None and slot_mapping is not None
    if v.shape != k.shape:
        raise ValueError(f"v shape {tuple(v.shape)} != k shape {tuple(k.shape)}")
    if k_cache.dim() != 4 or k_cache.shape[2:] != k.shape[1:]:
        raise ValueError(
            f"k_cache must be [num_blocks, block_size, {k.shape[1]}, {k.shape[2]}], got {tuple(k_cache.shape)}"
        )
    if v_cache.shape != k_cache.shape or v_cache.dtype != k_cache.dtype:
        raise ValueError(
            f"v_cache {v_cache.dtype} {tuple(v_cache.shape)} must match k_cache {k_cache.dtype} {tuple(k_cache.shape)}"
        )
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] != k.shape[0] or not _is_int(slot_mapping):
        raise ValueError(
            f"slot_mapping must be an integer tensor [T={k.shape[0]}], got {slot_mapping.dtype} {tuple(slot_mapping.shape)}"
        )
    return True


def check_last_contiguous(**tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and t.shape[-1] > 1 and t.stride(-1) != 1:
            raise ValueError(f"{name} must have stride 1 on its last dim, got strides {tuple(t.stride())}")


def check_device(device: torch.device, **tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name} must be on {device}, got {t.device}")
