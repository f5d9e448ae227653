"""Paged gated causal attention and the KV-cache write.

CUDA tensors go to the Triton kernels (``kernels.py``), everything else to the fp32 torch reference
(``reference.py``). Both share one signature; see the reference docstrings for shapes.
"""

from __future__ import annotations

import torch

from deltaserve.ops.attention import reference

__all__ = ["causal_attention", "paged_attention", "write_kv_cache"]


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
    """Scatter ``k, v [T, Hkv, D]`` into ``k_cache, v_cache [num_blocks, block_size, Hkv, D]`` in place
    at ``slot_mapping [T]`` (``slot = block * block_size + offset``; ``slot < 0`` skipped). The cache
    stores ``k / k_scale`` and ``v / v_scale`` (per-tensor scales of an fp8 cache; 1.0 otherwise)."""
    if k_cache.is_cuda:
        from deltaserve.ops.attention import kernels

        return kernels.write_kv_cache(k, v, k_cache, v_cache, slot_mapping, k_scale=k_scale, v_scale=v_scale)
    return reference.write_kv_cache(k, v, k_cache, v_cache, slot_mapping, k_scale=k_scale, v_scale=v_scale)


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
    """Causal attention of ``q [T, Hq, D]`` over the paged cache; returns ``[T, Hq, D]`` (q.dtype).

    ``seq_lens [B]`` includes this step's tokens (already in the cache); ``cu_seqlens_q [B+1]``
    splits ``q``; ``block_tables [B, max_blocks]``; optional ``gate [T, Hq, D]`` applies
    ``sigmoid(gate)`` to the output. On CUDA, pass ``max_seqlen_q`` (max query length, a Python
    int) and optionally ``max_seqlen_k`` (upper bound of ``seq_lens``) to avoid any host sync,
    e.g. under CUDA-graph capture. ``k_scale``/``v_scale`` dequantise an fp8 cache
    (real K = cache * k_scale). See ``reference.paged_attention`` for the full contract.
    """
    if q.is_cuda:
        from deltaserve.ops.attention import kernels

        return kernels.paged_attention(
            q,
            k_cache,
            v_cache,
            block_tables=block_tables,
            cu_seqlens_q=cu_seqlens_q,
            seq_lens=seq_lens,
            scale=scale,
            gate=gate,
            max_seqlen_q=max_seqlen_q,
            max_seqlen_k=max_seqlen_k,
            k_scale=k_scale,
            v_scale=v_scale,
        )
    return reference.paged_attention(
        q,
        k_cache,
        v_cache,
        block_tables=block_tables,
        cu_seqlens_q=cu_seqlens_q,
        seq_lens=seq_lens,
        scale=scale,
        gate=gate,
        k_scale=k_scale,
        v_scale=v_scale,
    )


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor,
    scale: float,
    gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Contiguous varlen causal attention: ``q [T, Hq, D]``, ``k, v [T, Hkv, D]``, ``cu_seqlens [B+1]``;
    returns ``[T, Hq, D]`` (q.dtype). Reference implementation on every device (tests, small inputs)."""
    return reference.causal_attention(q, k, v, cu_seqlens=cu_seqlens, scale=scale, gate=gate)
