"""Plain-torch reference for paged (gated) causal attention and the KV-cache write.

The math is done in fp32; these functions are the oracle for the Triton kernels and the CPU path of
the models. They sync with the host (``.tolist()``) and loop over sequences: never use them inside a
captured CUDA graph.

Paged KV cache layout: ``k_cache``/``v_cache`` are ``[num_blocks, block_size, Hkv, D]`` (any strides,
e.g. one layer's view of a bigger pool). Token ``i`` of sequence ``b`` lives at
``cache[block_tables[b, i // block_size], i % block_size]``; a flat slot is
``block * block_size + offset``.
"""

from __future__ import annotations

import torch

__all__ = ["causal_attention", "paged_attention", "write_kv_cache"]


def _is_int(t: torch.Tensor) -> bool:
    return not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool


def check_kv_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[int, int, int, int]:
    """Validate a K/V cache pair; returns ``(num_blocks, block_size, Hkv, D)``."""
    if k_cache.dim() != 4:
        raise ValueError(f"k_cache must be [num_blocks, block_size, Hkv, D], got {tuple(k_cache.shape)}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache shape {tuple(v_cache.shape)} != k_cache shape {tuple(k_cache.shape)}")
    if v_cache.dtype != k_cache.dtype:
        raise ValueError(f"v_cache dtype {v_cache.dtype} != k_cache dtype {k_cache.dtype}")
    if v_cache.device != k_cache.device:
        raise ValueError("v_cache must be on the same device as k_cache")
    return tuple(k_cache.shape)  # type: ignore[return-value]


def check_write_kv_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Argument checks shared by the reference and the Triton ``write_kv_cache``."""
    _, _, hkv, d = check_kv_cache(k_cache, v_cache)
    if k.dim() != 3 or k.shape[1:] != (hkv, d):
        raise ValueError(f"k must be [T, {hkv}, {d}] to match k_cache, got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v shape {tuple(v.shape)} != k shape {tuple(k.shape)}")
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] != k.shape[0] or not _is_int(slot_mapping):
        raise ValueError(f"slot_mapping must be an integer tensor [T={k.shape[0]}], got {slot_mapping}")
    for name, t in (("k", k), ("v", v), ("slot_mapping", slot_mapping)):
        if t.device != k_cache.device:
            raise ValueError(f"{name} must be on the same device as k_cache ({k_cache.device})")


def check_paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    gate: torch.Tensor | None,
) -> None:
    """Shape/dtype/device checks (no host sync) shared by the reference and the Triton path."""
    _, _, hkv, d = check_kv_cache(k_cache, v_cache)
    if q.dim() != 3 or q.shape[2] != d:
        raise ValueError(f"q must be [T, Hq, {d}] to match k_cache, got {tuple(q.shape)}")
    if q.shape[1] % hkv != 0:
        raise ValueError(f"q heads ({q.shape[1]}) must be a multiple of the kv heads ({hkv})")
    if block_tables.dim() != 2 or not _is_int(block_tables):
        raise ValueError(f"block_tables must be an integer tensor [B, max_blocks], got {block_tables}")
    b = block_tables.shape[0]
    if cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape[0] != b + 1 or not _is_int(cu_seqlens_q):
        raise ValueError(f"cu_seqlens_q must be an integer tensor [B+1={b + 1}], got {cu_seqlens_q}")
    if seq_lens.dim() != 1 or seq_lens.shape[0] != b or not _is_int(seq_lens):
        raise ValueError(f"seq_lens must be an integer tensor [B={b}], got {seq_lens}")
    if gate is not None and gate.shape != q.shape:
        raise ValueError(f"gate shape {tuple(gate.shape)} != q shape {tuple(q.shape)}")
    named = (("q", q), ("block_tables", block_tables), ("cu_seqlens_q", cu_seqlens_q), ("seq_lens", seq_lens))
    for name, t in (*named, ("gate", gate)):
        if t is not None and t.device != k_cache.device:
            raise ValueError(f"{name} must be on the same device as k_cache ({k_cache.device})")


def _bits(x: torch.Tensor) -> torch.Tensor:
    """1-byte float tensors (fp8) as uint8 views, others unchanged."""
    return x.view(torch.uint8) if x.dtype.is_floating_point and x.element_size() == 1 else x


def _gather(cache: torch.Tensor, blocks: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """``cache[blocks, offs]`` for any dtype, fp8 included; ``[L, Hkv, D]``."""
    return _bits(cache)[blocks, offs].view(cache.dtype)


def write_kv_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Scatter new keys/values into the paged cache, in place.

    Args:
        k, v: ``[T, Hkv, D]`` new keys and values.
        k_cache, v_cache: ``[num_blocks, block_size, Hkv, D]``, any strides (written in place).
        slot_mapping: ``[T]`` integer; ``slot = block * block_size + offset``; ``slot < 0`` is skipped.
        k_scale, v_scale: the cache stores ``k / k_scale`` and ``v / v_scale`` (per-tensor scales for
            an fp8 cache; 1.0 for bf16).
    """
    check_write_kv_cache(k, v, k_cache, v_cache, slot_mapping)
    nb, bs = k_cache.shape[:2]
    slots = slot_mapping.long()  # [T]
    keep = slots >= 0  # [T]
    if bool((slots[keep] >= nb * bs).any()):
        raise ValueError(f"slot_mapping has a slot >= num_blocks * block_size ({nb * bs})")
    slots = slots[keep]
    block, off = slots // bs, slots % bs
    # Advanced-index assignment on a view writes through to the underlying storage (fp8 via a
    # same-size integer view: not every device indexes float8 tensors).
    for cache, x, sc in ((k_cache, k, k_scale), (v_cache, v, v_scale)):
        vals = (x[keep].float() / sc).to(cache.dtype)  # [T', Hkv, D]
        _bits(cache)[block, off] = _bits(vals)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, start: int) -> torch.Tensor:
    """fp32 causal attention of ``q [Lq, Hq, D]`` at positions ``start..start+Lq-1`` over
    ``k, v [Lk, Hkv, D]`` at positions ``0..Lk-1``; returns ``[Lq, Hq, D]`` fp32."""
    group = q.shape[1] // k.shape[1]
    qf = q.float()  # [Lq, Hq, D]
    kf = k.float().repeat_interleave(group, dim=1)  # [Lk, Hq, D]
    vf = v.float().repeat_interleave(group, dim=1)  # [Lk, Hq, D]
    s = torch.einsum("qhd,khd->hqk", qf, kf) * scale  # [Hq, Lq, Lk]
    qpos = start + torch.arange(q.shape[0], device=q.device)  # [Lq]
    kpos = torch.arange(k.shape[0], device=q.device)  # [Lk]
    s = s.masked_fill(kpos[None, None, :] > qpos[None, :, None], float("-inf"))
    p = torch.softmax(s, dim=-1)  # [Hq, Lq, Lk]
    return torch.einsum("hqk,khd->qhd", p, vf)  # [Lq, Hq, D]


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    gate: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Causal attention of varlen queries over a paged KV cache (GQA, optional sigmoid output gate).

    Args:
        q: ``[T, Hq, D]``; sequence ``b`` owns rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]``.
        k_cache, v_cache: ``[num_blocks, block_size, Hkv, D]`` (this step's K/V already written).
        block_tables: ``[B, max_blocks]`` integer page ids per sequence.
        cu_seqlens_q: ``[B+1]`` integer cumulative query lengths (a sequence may have 0 queries).
        seq_lens: ``[B]`` total context length of each sequence including this step's tokens; the
            ``q_len`` queries of sequence ``b`` sit at positions ``seq_len-q_len .. seq_len-1``.
        scale: softmax scale (usually ``D ** -0.5``).
        gate: optional ``[T, Hq, D]``; the output is multiplied by ``sigmoid(gate)``.
        max_seqlen_q, max_seqlen_k: accepted for signature parity with the Triton path (unused).
        k_scale, v_scale: dequantisation scales of the cache (real K = cache * k_scale), for fp8.

    Returns:
        ``[T, Hq, D]`` in ``q.dtype``; rows past ``cu_seqlens_q[-1]`` (padding) are zero.
        Query head ``h`` reads kv head ``h // (Hq // Hkv)``; softmax in fp32.
    """
    check_paged_attention(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, gate)
    n_blocks, bs, _, _ = k_cache.shape
    cu = cu_seqlens_q.tolist()
    lens = seq_lens.tolist()
    if cu[0] != 0 or cu[-1] > q.shape[0] or any(a > b for a, b in zip(cu[:-1], cu[1:])):
        raise ValueError(f"cu_seqlens_q must start at 0, be non-decreasing and end <= T, got {cu}")
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)  # [T, Hq, D]
    for b, seq_len in enumerate(lens):
        s, e = cu[b], cu[b + 1]
        if e == s:
            continue
        if seq_len < e - s:
            raise ValueError(f"seq_lens[{b}]={seq_len} is shorter than its {e - s} queries")
        if seq_len > block_tables.shape[1] * bs:
            raise ValueError(f"seq_lens[{b}]={seq_len} exceeds block_tables capacity")
        pos = torch.arange(seq_len, device=q.device)  # [L]
        blocks = block_tables[b, pos // bs].long()  # [L]
        if int(blocks.min()) < 0 or int(blocks.max()) >= n_blocks:
            raise ValueError(
                f"block_tables[{b}] has page ids outside [0, {n_blocks}) for its {seq_len} tokens"
            )
        k = _gather(k_cache, blocks, pos % bs).float() * k_scale  # [L, Hkv, D]
        v = _gather(v_cache, blocks, pos % bs).float() * v_scale  # [L, Hkv, D]
        out[s:e] = _attend(q[s:e], k, v, scale, seq_len - (e - s))
    if gate is not None:
        out *= torch.sigmoid(gate.float())
    return out.to(q.dtype)


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor,
    scale: float,
    gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Contiguous varlen causal attention (no cache, no prefix).

    Args:
        q: ``[T, Hq, D]``; k, v: ``[T, Hkv, D]``; sequence ``b`` owns rows
            ``cu_seqlens[b]:cu_seqlens[b+1]`` of all three.
        cu_seqlens: ``[B+1]`` integer cumulative lengths.
        scale: softmax scale.  gate: optional ``[T, Hq, D]`` sigmoid output gate.

    Returns:
        ``[T, Hq, D]`` in ``q.dtype``; rows past ``cu_seqlens[-1]`` are zero.
    """
    if q.dim() != 3 or k.dim() != 3 or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(f"k must be [T, Hkv, D] matching q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v shape {tuple(v.shape)} != k shape {tuple(k.shape)}")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q heads ({q.shape[1]}) must be a multiple of the kv heads ({k.shape[1]})")
    if cu_seqlens.dim() != 1 or not _is_int(cu_seqlens):
        raise ValueError(f"cu_seqlens must be a 1-D integer tensor, got {cu_seqlens}")
    if gate is not None and gate.shape != q.shape:
        raise ValueError(f"gate shape {tuple(gate.shape)} != q shape {tuple(q.shape)}")
    cu = cu_seqlens.tolist()
    if cu[0] != 0 or cu[-1] > q.shape[0] or any(a > b for a, b in zip(cu[:-1], cu[1:])):
        raise ValueError(f"cu_seqlens must start at 0, be non-decreasing and end <= T, got {cu}")
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)  # [T, Hq, D]
    for s, e in zip(cu[:-1], cu[1:]):
        if e > s:
            out[s:e] = _attend(q[s:e], k[s:e], v[s:e], scale, 0)
    if gate is not None:
        out *= torch.sigmoid(gate.float())
    return out.to(q.dtype)
