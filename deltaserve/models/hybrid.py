"""The decoder shared by Qwen3-Next and Qwen3.5 (architecture card, DESIGN.md §2).

`num_hidden_layers` pre-norm blocks; each mixes tokens with Gated DeltaNet (`linear_attn`) or gated
full attention (`self_attn`) per `layer_types`, then a sparse MoE or dense SwiGLU `mlp`. Norms are
zero-centred RMSNorm; the residual add is fused into the next norm.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from deltaserve.context import ForwardBatch
from deltaserve.layers.attention import GatedAttention
from deltaserve.layers.embedding import LMHead, VocabEmbedding
from deltaserve.layers.gdn import GatedDeltaNet
from deltaserve.layers.mlp import SwiGLUMLP
from deltaserve.layers.moe import SparseMoeBlock
from deltaserve.layers.norm import RMSNorm
from deltaserve.layers.rotary import RotaryEmbedding
from deltaserve.loader.names import NameRules
from deltaserve.models.config import LINEAR, ModelConfig


class HybridDecoderLayer(nn.Module):
    """`h += mixer(input_layernorm(h)); h += mlp(post_attention_layernorm(h))`."""

    def __init__(self, config: ModelConfig, layer_idx: int, *, interleaved_gdn: bool, dtype, device) -> None:
        super().__init__()
        c = config
        self.layer_type = c.layer_types[layer_idx]
        if self.layer_type == LINEAR:
            self.linear_attn = GatedDeltaNet(
                layer_idx,
                c.hidden_size,
                c.linear_num_key_heads,
                c.linear_num_value_heads,
                c.linear_key_head_dim,
                c.linear_value_head_dim,
                c.linear_conv_kernel_dim,
                c.rms_norm_eps,
                interleaved_checkpoint=interleaved_gdn,
                dtype=dtype,
                device=device,
            )
        else:
            self.self_attn = GatedAttention(
                layer_idx,
                c.hidden_size,
                c.num_attention_heads,
                c.num_key_value_heads,
                c.head_dim,
                c.rms_norm_eps,
                output_gate=c.attn_output_gate,
                bias=c.attention_bias,
                dtype=dtype,
                device=device,
            )
        if c.is_moe_layer(layer_idx):
            self.mlp: nn.Module = SparseMoeBlock(
                c.hidden_size,
                c.num_experts,
                c.num_experts_per_tok,
                c.moe_intermediate_size,
                c.shared_expert_intermediate_size,
                c.norm_topk_prob,
                dtype=dtype,
                device=device,
            )
        else:
            self.mlp = SwiGLUMLP(c.hidden_size, c.intermediate_size, dtype=dtype, device=device)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, dtype=dtype, device=device)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, dtype=dtype, device=device)

    def forward(
        self,
        h: torch.Tensor,  # [T, H]
        residual: torch.Tensor | None,  # [T, H]
        rope: tuple[torch.Tensor, torch.Tensor],
        batch: ForwardBatch,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual, x = h, self.input_layernorm(h)
        else:
            x, residual = self.input_layernorm(h, residual)
        if self.layer_type == LINEAR:
            x = self.linear_attn(x, batch)
        else:
            x = self.self_attn(x, rope, batch)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class HybridModel(nn.Module):
    """Embedding, decoder layers, final norm (HF `model.*`)."""

    def __init__(self, config: ModelConfig, *, interleaved_gdn: bool, dtype, device) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size, dtype=dtype, device=device)
        self.layers = nn.ModuleList(
            HybridDecoderLayer(config, i, interleaved_gdn=interleaved_gdn, dtype=dtype, device=device)
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype, device=device)
        self.rotary_emb = RotaryEmbedding(
            config.rotary_dim,
            config.rope_theta,
            max_positions=config.max_position_embeddings,
            mrope_section=config.mrope_section,
            mrope_interleaved=config.mrope_interleaved,
            device=device,
        )

    def forward(
        self, input_ids: torch.Tensor | None, batch: ForwardBatch, inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:  # [T] -> [T, H]
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # [T, H]
        rope = self.rotary_emb(batch.positions)  # ([T, rd], [T, rd])
        residual = None
        for layer in self.layers:
            h, residual = layer(h, residual, rope, batch)
        h, _ = self.norm(h, residual)
        return h


class HybridForCausalLM(nn.Module):
    """Base of every served architecture: `model.*` decoder plus `lm_head`.

    Subclasses set `interleaved_gdn` (Qwen3-Next's fused `in_proj_qkvz`/`in_proj_ba`) and
    `name_rules` (checkpoint name -> parameter name and shard).
    """

    interleaved_gdn: bool = False
    name_rules: NameRules

    def __init__(
        self, config: ModelConfig, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> None:
        super().__init__()
        self.config = config
        self.dtype = dtype
        self.model = HybridModel(config, interleaved_gdn=self.interleaved_gdn, dtype=dtype, device=device)
        self.lm_head = LMHead(config.vocab_size, config.hidden_size, dtype=dtype, device=device)
        if config.tie_word_embeddings:
            self.lm_head.tie_to(self.model.embed_tokens)
        if config.quantization:
            from deltaserve.layers.fp8 import apply_fp8

            apply_fp8(self, config.quantization, self.name_rules.checkpoint_name)
            for module in self.modules():  # FP8 replaced some fused GDN weights: two GEMMs there
                if isinstance(module, GatedDeltaNet):
                    module.fuse_projections()

    def forward(
        self, input_ids: torch.Tensor | None, batch: ForwardBatch, inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Hidden states `[T, H]` after the final norm."""
        return self.model(input_ids, batch, inputs_embeds)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, H] -> [N, V] fp32
        return self.lm_head(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load (name, tensor) pairs with strict accounting; returns the loaded parameter names."""
        from deltaserve.loader.load import load_named_weights

        return load_named_weights(self, weights, self.name_rules).loaded_params
