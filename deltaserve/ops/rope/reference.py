"""Plain-torch reference rotary embedding (fp32 math), HF convention.

``inv_freq[i] = theta ** (-2i / rotary_dim)``; ``emb = cat(freqs, freqs)``; neox ``rotate_half`` on the
first ``rotary_dim`` dims of each head, the rest passed through (partial RoPE, Qwen3-Next: 64 of 256).

mRoPE (Qwen3.5): positions ``[3, T]`` (temporal, height, width). Each of the ``rotary_dim / 2``
frequencies takes its position from one of the three axes:
- interleaved (Qwen3.5): frequency ``j`` uses axis 1 if ``j % 3 == 1 and j < 3 * section[1]``, axis 2
  if ``j % 3 == 2 and j < 3 * section[2]``, else axis 0;
- chunked (Qwen2-VL style): the first ``section[0]`` frequencies use axis 0, the next ``section[1]``
  axis 1, the last ``section[2]`` axis 2.
Text-only positions ``[T]`` mean all three axes equal, which reduces to plain RoPE.
"""

from __future__ import annotations

import functools

import torch

from deltaserve.ops.norm.reference import rms_norm
from deltaserve.ops.rope.checks import check_cache, check_cos_sin, check_heads

__all__ = [
    "rope_cos_sin",
    "rope_cos_sin_table",
    "rope_table_columns",
    "rope_cos_sin_lookup",
    "apply_rotary",
    "qk_norm_rope",
    "mrope_axis_map",
]


def mrope_axis_map(rotary_dim: int, mrope_section: list[int], mrope_interleaved: bool) -> torch.Tensor:
    """Which position axis (0=t, 1=h, 2=w) each of the ``rotary_dim // 2`` frequencies uses.

    Returns an int64 tensor ``[rotary_dim // 2]`` on the CPU.
    """
    half = rotary_dim // 2
    if len(mrope_section) != 3 or any(s < 0 for s in mrope_section):
        raise ValueError(f"mrope_section must be three non-negative ints, got {mrope_section}")
    if not mrope_interleaved and sum(mrope_section) != half:
        raise ValueError(f"mrope_section {mrope_section} must sum to rotary_dim // 2 = {half}")
    # Interleaved sections beyond rotary_dim // 2 are truncated, as HF's slicing does (a checkpoint
    # whose config omits mrope_section gets HF's default [11, 11, 10] whatever its head size).
    axis = torch.zeros(half, dtype=torch.int64)  # [rd/2]
    if mrope_interleaved:
        for a in (1, 2):
            axis[a : 3 * mrope_section[a] : 3] = a
    else:
        s0, s1, _ = mrope_section
        axis[s0 : s0 + s1] = 1
        axis[s0 + s1 :] = 2
    return axis


@functools.lru_cache(maxsize=32)
def _axis_map_on(
    rotary_dim: int, mrope_section: tuple[int, ...], mrope_interleaved: bool, device: torch.device
) -> torch.Tensor:
    """`mrope_axis_map` built once per device: no host-to-device copy in every forward (which
    would also break CUDA-graph capture of a Qwen3.5 decode step)."""
    return mrope_axis_map(rotary_dim, list(mrope_section), mrope_interleaved).to(device)


def _inv_freq(rotary_dim: int, theta: float, device: torch.device | str | None) -> torch.Tensor:
    """``theta ** (-2i / rotary_dim)`` ``[rd/2]`` fp32 (the one formula the tables and the lookups share)."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=device) / rotary_dim  # [rd/2]
    return 1.0 / (theta**exponents)  # [rd/2]


def rope_cos_sin(
    positions: torch.Tensor,
    rotary_dim: int,
    theta: float,
    *,
    mrope_section: list[int] | None = None,
    mrope_interleaved: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cos/sin tables for the given positions.

    Args:
        positions: ``[T]`` integer positions, or ``[3, T]`` (t/h/w) when ``mrope_section`` is given.
        rotary_dim: number of rotated dims per head (even).
        theta: RoPE base.
        mrope_section: three section sizes summing to ``rotary_dim // 2`` (mRoPE), or None.
        mrope_interleaved: Qwen3.5 interleaved layout (else chunked sections).
    Returns:
        ``(cos, sin)``, each ``[T, rotary_dim]`` fp32, laid out as ``cat(f, f)``.
    """
    if rotary_dim <= 0 or rotary_dim % 2 != 0:
        raise ValueError(f"rotary_dim must be a positive even int, got {rotary_dim}")
    if positions.is_floating_point() or positions.is_complex():
        raise ValueError(f"positions must be an integer tensor, got {positions.dtype}")
    if not theta > 0:
        raise ValueError(f"theta must be > 0, got {theta}")
    device = positions.device
    inv_freq = _inv_freq(rotary_dim, theta, device)  # [rd/2]
    if mrope_section is None:
        if positions.dim() != 1:
            raise ValueError(f"positions must be [T] without mrope_section, got {tuple(positions.shape)}")
        freqs = positions.float()[:, None] * inv_freq  # [T, rd/2]
    else:
        if positions.dim() == 1:
            positions = positions.unsqueeze(0).expand(3, -1)  # [3, T]
        if positions.dim() != 2 or positions.shape[0] != 3:
            raise ValueError(
                f"positions must be [T] or [3, T] with mrope_section, got {tuple(positions.shape)}"
            )
        axis = _axis_map_on(rotary_dim, tuple(mrope_section), mrope_interleaved, device)  # [rd/2]
        all_freqs = positions.float()[:, :, None] * inv_freq  # [3, T, rd/2]
        freqs = all_freqs.gather(0, axis.view(1, 1, -1).expand(1, all_freqs.shape[1], -1))[0]  # [T, rd/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [T, rd]
    return emb.cos(), emb.sin()


def rope_cos_sin_table(
    max_positions: int, rotary_dim: int, theta: float, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """Cos/sin of every position ``0 .. max_positions-1``, built once (e.g. at model init).

    Returns ``[max_positions, 2 * rotary_dim]`` fp32: row ``p`` is ``cos | sin`` of position ``p``, each
    laid out as ``cat(f, f)``; the same values ``rope_cos_sin`` computes on the same device.
    """
    if rotary_dim <= 0 or rotary_dim % 2 != 0:
        raise ValueError(f"rotary_dim must be a positive even int, got {rotary_dim}")
    if max_positions <= 0:
        raise ValueError(f"max_positions must be > 0, got {max_positions}")
    if not theta > 0:
        raise ValueError(f"theta must be > 0, got {theta}")
    inv_freq = _inv_freq(rotary_dim, theta, device)  # [rd/2]
    positions = torch.arange(max_positions, dtype=torch.int64, device=device)  # [P]
    freqs = positions.float()[:, None] * inv_freq  # [P, rd/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [P, rd]
    return torch.cat((emb.cos(), emb.sin()), dim=-1)  # [P, 2rd]


def rope_table_columns(rotary_dim: int, mrope_section: list[int], mrope_interleaved: bool) -> torch.Tensor:
    """Position axis (0=t, 1=h, 2=w) of every column of a ``rope_cos_sin_table`` row under mRoPE.

    Returns int64 ``[2 * rotary_dim]`` on the CPU (frequency ``j`` sits in columns ``j``, ``j + rd/2``
    of the cos half and the same two of the sin half).
    """
    axis = mrope_axis_map(rotary_dim, mrope_section, mrope_interleaved)  # [rd/2]
    return axis.repeat(4)  # [2rd]


def rope_cos_sin_lookup(
    table: torch.Tensor, positions: torch.Tensor, *, mrope_columns: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rope_cos_sin`` as a gather from a ``rope_cos_sin_table``: one launch for ``[T]`` positions,
    two for mRoPE ``[3, T]``; no host sync and a ``[T]``-sized allocation only (CUDA-graph safe).

    Args:
        table: ``[P, 2 * rd]`` from ``rope_cos_sin_table``.
        positions: ``[T]`` integer positions in ``[0, P)`` (text-only mRoPE included: all axes equal),
            or ``[3, T]`` (t/h/w) with ``mrope_columns``. Out-of-range positions are an index error
            (a device-side assert on CUDA): they are not checked here, that would sync.
        mrope_columns: ``[2 * rd]`` int64 from ``rope_table_columns``, on the table's device.
    Returns:
        ``(cos, sin)``, each a ``[T, rd]`` fp32 view (row stride ``2 * rd``) of one gathered tensor.
    """
    if table.dim() != 2 or table.shape[1] % 4 != 0:
        raise ValueError(f"table must be [P, 2 * rotary_dim], got {tuple(table.shape)}")
    if positions.is_floating_point() or positions.is_complex():
        raise ValueError(f"positions must be an integer tensor, got {positions.dtype}")
    rd = table.shape[1] // 2
    if positions.dim() == 1:
        rows = table.index_select(0, positions)  # [T, 2rd]
    elif positions.dim() == 2 and positions.shape[0] == 3 and mrope_columns is not None:
        if mrope_columns.shape != (2 * rd,):
            raise ValueError(f"mrope_columns must be [{2 * rd}], got {tuple(mrope_columns.shape)}")
        index = positions.to(torch.int64).index_select(0, mrope_columns)  # [2rd, T]
        rows = table.gather(0, index.t())  # [T, 2rd]: rows[t, c] = table[positions[axis(c), t], c]
    else:
        raise ValueError(f"positions must be [T], or [3, T] with mrope_columns, got {tuple(positions.shape)}")
    return rows[:, :rd], rows[:, rd:]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Neox-style rotary on the first ``rd`` dims of every head (partial RoPE).

    Args:
        x: ``[T, H, D]``.
        cos, sin: ``[T, rd]`` with ``rd <= D``, ``rd`` even (from ``rope_cos_sin``).
    Returns:
        ``[T, H, D]`` in ``x.dtype``; dims ``rd:`` are copied unchanged.
    """
    check_heads("x", x)
    rd = check_cos_sin(cos, sin, x.shape[0], x.shape[2])
    xf = x.float()  # [T, H, D]
    x_rot = xf[..., :rd]  # [T, H, rd]
    half = rd // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)  # [T, H, rd]
    c = cos.float()[:, None, :]  # [T, 1, rd]
    s = sin.float()[:, None, :]
    out_rot = x_rot * c + rotated * s  # [T, H, rd]
    return torch.cat((out_rot, xf[..., rd:]), dim=-1).to(x.dtype)


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
    """Per-head q/k RMSNorm then partial RoPE (gated attention's q_norm/k_norm + rotary), optionally
    writing the rotated K and V into a paged KV cache.

    Args:
        q: ``[T, Hq, D]``; k: ``[T, Hkv, D]`` (row strides free).
        q_weight, k_weight: ``[D]`` norm weights (``(1 + w)`` when ``zero_centered``).
        cos, sin: ``[T, rd]`` from ``rope_cos_sin`` (rd even, <= D).
        v: ``[T, Hkv, D]``; k_cache, v_cache: ``[num_blocks, block_size, Hkv, D]`` (any strides);
            slot_mapping: ``[T]`` int, ``slot = block * block_size + offset``, ``< 0`` skipped.
            All four or none.
    Returns:
        ``(q_out [T, Hq, D], k_out [T, Hkv, D])`` in q's / k's dtype; the normalised values are rounded
        to the input dtype before the rotation (as an unfused norm then rotary would).
    """
    check_heads("q", q)
    check_heads("k", k, q.shape[0], q.shape[2])
    write = check_cache(k, v, k_cache, v_cache, slot_mapping)
    q_out = apply_rotary(rms_norm(q, q_weight, eps, zero_centered=zero_centered), cos, sin)  # [T, Hq, D]
    k_out = apply_rotary(rms_norm(k, k_weight, eps, zero_centered=zero_centered), cos, sin)  # [T, Hkv, D]
    if write:
        assert v is not None and k_cache is not None and v_cache is not None and slot_mapping is not None
        bs = k_cache.shape[1]
        for i, slot in enumerate(slot_mapping.tolist()):
            if slot < 0:
                continue
            k_cache[slot // bs, slot % bs] = k_out[i].to(k_cache.dtype)
            v_cache[slot // bs, slot % bs] = v[i].to(v_cache.dtype)
    return q_out, k_out
