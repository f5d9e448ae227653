"""The seam: one `ForwardBatch` per forward pass, and the backend Protocols layers call through it.

The standalone engine builds a `ForwardBatch` from its scheduler; the SGLang and vLLM bridges build
the same dataclass from the host's batch and hand our kernels the host's own state tensors (through
a backend object). Model files only ever see this module — never sglang, vllm or the engine.

Token layout: the tokens of all sequences are flattened into one dimension `T`, sequence `b`
owning rows `cu_seqlens[b]:cu_seqlens[b+1]` (its new tokens this step). A decoding sequence owns
one row; a prefilling one owns a chunk of its prompt. Mixed batches are allowed.

Graph safety: every tensor here is prepared before the forward; the host-side ints
(`num_seqs`, `max_query_len`, `max_seq_len`, `decode_only`) are fixed per captured graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class AttentionMetadata:
    """Paged-KV metadata for the full-attention layers.

    The KV cache of a layer is `[num_blocks, block_size, Hkv, D]` (k and v separate). Position `p`
    of sequence `b` lives in block `block_tables[b, p // block_size]`, row `p % block_size`.
    """

    block_tables: torch.Tensor  # [B, max_blocks] int32
    slot_mapping: torch.Tensor  # [T] int64: flat slot (block * block_size + offset) per new token; < 0 = pad
    block_size: int


@dataclass
class GDNMetadata:
    """State-slot metadata for the Gated DeltaNet layers.

    Each sequence owns one slot in every GDN layer's conv-state and recurrent-state pools.
    """

    state_slots: torch.Tensor  # [B] int32; < 0 = padding (no state read or written)
    has_initial_state: torch.Tensor  # [B] bool: continue from the slot's state, else start from zeros
    decode_only: bool = False  # every sequence has exactly one new token and an initial state


@dataclass
class ForwardBatch:
    """Everything one forward pass needs besides the token ids."""

    positions: torch.Tensor  # [T] int64, or [3, T] for Qwen3.5 mRoPE (t, h, w)
    cu_seqlens: torch.Tensor  # [B+1] int32: new-token offsets per sequence
    seq_lens: torch.Tensor  # [B] int32: total context length per sequence including this step
    num_seqs: int
    max_query_len: int
    max_seq_len: int
    attn: AttentionMetadata | None
    gdn: GDNMetadata | None
    attn_backend: AttentionBackend | None = None
    gdn_backend: GDNBackend | None = None
    logits_indices: torch.Tensor | None = None  # [N] rows of the hidden states that need logits

    @property
    def num_tokens(self) -> int:
        return int(self.positions.shape[-1])


@runtime_checkable
class AttentionBackend(Protocol):
    """Gated full attention over a paged KV cache owned by the backend (or the host)."""

    def attention(
        self,
        layer_id: int,
        q: torch.Tensor,  # [T, Hq, D] (after q_norm and RoPE)
        k: torch.Tensor,  # [T, Hkv, D] (after k_norm and RoPE)
        v: torch.Tensor,  # [T, Hkv, D]
        gate: torch.Tensor | None,  # [T, Hq, D]: output *= sigmoid(gate)
        batch: ForwardBatch,
        scale: float,
    ) -> torch.Tensor:  # [T, Hq, D]
        """Write this step's k/v into the cache, then attend causally over each sequence's context."""
        ...


@runtime_checkable
class GDNBackend(Protocol):
    """Causal conv and gated delta rule over state pools owned by the backend (or the host)."""

    def causal_conv(
        self,
        layer_id: int,
        x: torch.Tensor,  # [T, conv_dim]
        weight: torch.Tensor,  # [conv_dim, W]
        bias: torch.Tensor | None,  # [conv_dim]
        batch: ForwardBatch,
    ) -> torch.Tensor:  # [T, conv_dim], SiLU applied
        """Depthwise causal conv1d + SiLU per sequence, continuing from and updating the conv state."""
        ...

    def gated_delta_rule(
        self,
        layer_id: int,
        q: torch.Tensor,  # [T, Hk, Dk]
        k: torch.Tensor,  # [T, Hk, Dk]
        v: torch.Tensor,  # [T, Hv, Dv]
        a: torch.Tensor,  # [T, Hv] raw decay input
        b: torch.Tensor,  # [T, Hv] raw beta input
        A_log: torch.Tensor,  # [Hv]
        dt_bias: torch.Tensor,  # [Hv]
        batch: ForwardBatch,
    ) -> torch.Tensor:  # [T, Hv, Dv]
        """Gating + l2norm(q, k) + gated delta rule per sequence, updating the recurrent state."""
        ...
