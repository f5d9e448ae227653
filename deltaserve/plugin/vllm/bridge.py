"""vLLM's per-step metadata and cache tensors -> deltaserve's `ForwardBatch` and `StateTensors`.

vLLM (V1) hands a model nothing but `input_ids` and `positions`; the rest lives in the forward
context: `attn_metadata[layer_name]` (one object per layer, shared within a KV-cache group) and
each registered layer's bound `kv_cache`. This module turns them into our seam, with no copies:

- full attention: `query_start_loc` -> `cu_seqlens`, `seq_lens`, `block_table` -> `block_tables`,
  `slot_mapping`; the layer's KV tensor is re-viewed as `k_cache, v_cache [NB, BS, Hkv, D]`.
- Gated DeltaNet (`GDNAttentionMetadata`): `non_spec_state_indices_tensor` -> `state_slots`,
  `has_initial_state`, `num_prefills == 0` -> `decode_only`; the layer's `(conv, ssm)` states
  are viewed as conv `[S, D, W-1]` (vLLM's "SD" pool `[S, W-1, D]` transposed) and ssm
  `[S, Hv, Dv, Dk]` (our "vk" layout).

vLLM orders decodes before prefills and pads with zero-length requests at the back; both metadata
objects describe the same request order. Only the first `num_actual_tokens` rows are real.
Nothing here imports vllm: the objects are read by attribute, so tests can pass stand-ins.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from deltaserve.backends.ops_backend import OpsBackend, StateTensors
from deltaserve.context import AttentionMetadata, ForwardBatch, GDNMetadata


class UnsupportedBatch(NotImplementedError):
    """A vLLM feature the bridge does not map (speculative decoding, an unknown KV layout)."""


def attention_kv_views(
    kv_cache: torch.Tensor, num_kv_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Views `k_cache, v_cache [num_blocks, block_size, Hkv, D]` of one attention layer's KV tensor.

    Accepted layouts (every view keeps block `b`'s bytes inside block `b`'s page, which the hybrid
    allocator shares with the GDN layers):
    - CPU_ATTN `[NB, Hkv, BS, 2*D]`: per (block, head) the first `BS*D` elements are the keys,
      the next `BS*D` the values (the backend's own `view(NB, Hkv, 2*BS, D).chunk(2, 2)`).
    - FlashAttention-style `[2, NB, BS, Hkv, D]` (any strides): `kv[0]`, `kv[1]`.
    """
    shape = tuple(kv_cache.shape)
    if kv_cache.dim() == 4 and shape[1] == num_kv_heads and shape[3] == 2 * head_dim:
        nb, _, bs, _ = shape
        packed = kv_cache.view(nb, num_kv_heads, 2 * bs, head_dim)  # [NB, Hkv, 2*BS, D]
        k = packed[:, :, :bs].transpose(1, 2)  # [NB, BS, Hkv, D]
        v = packed[:, :, bs:].transpose(1, 2)  # [NB, BS, Hkv, D]
        return k, v
    if kv_cache.dim() == 5 and shape[0] == 2 and shape[3] == num_kv_heads and shape[4] == head_dim:
        return kv_cache[0], kv_cache[1]
    raise UnsupportedBatch(
        f"kv_cache: unsupported attention KV layout {shape} for Hkv={num_kv_heads}, D={head_dim}"
    )


def gdn_state_views(
    states: tuple[torch.Tensor, ...] | list[torch.Tensor], *, conv_dim_first: bool, conv_width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Views `(conv [S, D, W-1], ssm [S, Hv, Dv, Dk])` of one GDN layer's bound `(conv, ssm)` states.

    `conv_dim_first` is vLLM's `is_conv_state_dim_first()` ("DS" pool `[S, D, W-1]`); the default
    "SD" pool `[S, W-1, D]` is transposed (a view). A longer conv state (speculative decoding keeps
    `W-1+num_spec` columns) is rejected.
    """
    if len(states) < 2:
        raise UnsupportedBatch(f"kv_cache: expected (conv, ssm) states, got {len(states)} tensors")
    conv, ssm = states[0], states[1]
    conv = conv if conv_dim_first else conv.transpose(-1, -2)  # [S, D, W-1]
    if conv.shape[-1] != conv_width - 1:
        raise UnsupportedBatch(
            f"conv state keeps {conv.shape[-1]} columns, expected {conv_width - 1} "
            "(speculative decoding is not supported by the deltaserve vLLM bridge)"
        )
    return conv, ssm


def _block_table(meta: Any) -> torch.Tensor:
    for name in ("block_table", "block_table_tensor", "block_tables"):
        table = getattr(meta, name, None)
        if table is not None:
            return table
    raise UnsupportedBatch(f"{type(meta).__name__} has no block table")


def _attention_metadata(meta: Any, n: int, b: int, block_size: int) -> AttentionMetadata:
    return AttentionMetadata(
        block_tables=_block_table(meta)[:b], slot_mapping=meta.slot_mapping[:n], block_size=block_size
    )


def _gdn_metadata(meta: Any, b: int) -> GDNMetadata:
    if getattr(meta, "num_spec_decodes", 0) or getattr(meta, "spec_sequence_masks", None) is not None:
        raise UnsupportedBatch("speculative decoding is not supported by the deltaserve vLLM bridge")
    if int(meta.num_decodes) + int(meta.num_prefills) != b:
        raise UnsupportedBatch(
            f"GDN metadata covers {meta.num_decodes}+{meta.num_prefills} sequences, expected {b}"
        )
    slots = meta.non_spec_state_indices_tensor[:b]  # [B]
    if int(meta.num_prefills) == 0:
        # Decodes only: every sequence continues from its state (one new token each).
        has_initial_state = torch.ones(b, dtype=torch.bool, device=slots.device)
    else:
        has_initial_state = meta.has_initial_state[:b]  # [B]
    return GDNMetadata(
        state_slots=slots,
        has_initial_state=has_initial_state,
        decode_only=int(meta.num_prefills) == 0 and b > 0,
    )


class LayerRoutingBackend:
    """`AttentionBackend` + `GDNBackend` that hands each layer the batch of its own KV-cache group.

    vLLM splits layers into KV-cache groups sharing one memory pool; each group has its own block
    table (attention) or state-slot table (GDN), so slots differ between layers of one step. The
    model passes the step's batch; this backend swaps in the layer's own metadata.
    """

    def __init__(self, ops: OpsBackend, batches: dict[int, ForwardBatch]) -> None:
        self.ops = ops
        self.batches = batches  # global layer index -> that layer's ForwardBatch

    def attention(self, layer_id, q, k, v, gate, batch, scale):  # [T, Hq, D]
        return self.ops.attention(layer_id, q, k, v, gate, self.batches[layer_id], scale)

    def causal_conv(self, layer_id, x, weight, bias, batch):  # [T, conv_dim]
        return self.ops.causal_conv(layer_id, x, weight, bias, self.batches[layer_id])

    def gated_delta_rule(self, layer_id, q, k, v, a, b, A_log, dt_bias, batch):  # [T, Hv, Dv]
        return self.ops.gated_delta_rule(layer_id, q, k, v, a, b, A_log, dt_bias, self.batches[layer_id])


def build_forward_batch(
    positions: torch.Tensor,
    attn_metas: dict[int, Any],
    gdn_metas: dict[int, Any],
    states: StateTensors,
) -> ForwardBatch:
    """Our `ForwardBatch` for vLLM's step, covering the first `num_actual_tokens` tokens.

    positions: `[T_in]` or `[3, T_in]` (mRoPE) from vLLM (possibly padded past the real tokens).
    attn_metas: global layer index -> that full-attention layer's metadata (`query_start_loc`,
    `seq_lens`, `block_table`, `slot_mapping`, `max_query_len`, `max_seq_len`, `num_actual_tokens`).
    gdn_metas: global layer index -> that GDN layer's `GDNAttentionMetadata` (`num_prefills`,
    `num_decodes`, `num_spec_decodes`, `num_actual_tokens`, `non_spec_state_indices_tensor`,
    `has_initial_state`).
    states: views of the bound caches (`state_tensors`); attention block sizes are read from them.
    The returned batch carries a `LayerRoutingBackend`; metadata objects shared by a group are
    converted once.
    """
    first_attn = attn_metas[min(attn_metas)]
    first_gdn = gdn_metas[min(gdn_metas)]
    n = int(first_attn.num_actual_tokens)
    b = int(first_gdn.num_decodes) + int(first_gdn.num_prefills)
    main = ForwardBatch(
        positions=positions[..., :n],
        cu_seqlens=first_attn.query_start_loc[: b + 1],  # [B+1]
        seq_lens=first_attn.seq_lens[:b],  # [B]
        num_seqs=b,
        max_query_len=int(first_attn.max_query_len),
        max_seq_len=int(first_attn.max_seq_len),
        attn=None,
        gdn=None,
    )
    batches: dict[int, ForwardBatch] = {}
    converted: dict[int, Any] = {}
    for layer, meta in attn_metas.items():
        block_size = int(states.kv[layer][0].shape[1])
        key = (id(meta), block_size)
        if key not in converted:
            converted[key] = dataclasses.replace(main, attn=_attention_metadata(meta, n, b, block_size))
        batches[layer] = converted[key]
    for layer, meta in gdn_metas.items():
        if id(meta) not in converted:
            converted[id(meta)] = dataclasses.replace(main, gdn=_gdn_metadata(meta, b))
        batches[layer] = converted[id(meta)]
    backend = LayerRoutingBackend(OpsBackend(states), batches)
    return dataclasses.replace(main, attn_backend=backend, gdn_backend=backend)


def state_tensors(
    attn_caches: dict[int, torch.Tensor],
    gdn_caches: dict[int, tuple[torch.Tensor, ...]],
    *,
    num_kv_heads: int,
    head_dim: int,
    conv_dim_first: bool,
    conv_width: int,
) -> StateTensors:
    """`StateTensors` of views over vLLM's bound caches, keyed by our global layer index."""
    conv, ssm = {}, {}
    for i, states in gdn_caches.items():
        conv[i], ssm[i] = gdn_state_views(states, conv_dim_first=conv_dim_first, conv_width=conv_width)
    return StateTensors(
        kv={i: attention_kv_views(t, num_kv_heads, head_dim) for i, t in attn_caches.items()},
        conv=conv,
        ssm=ssm,
        ssm_layout="vk",
    )
