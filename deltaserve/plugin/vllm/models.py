"""deltaserve's Qwen3-Next / Qwen3.5 classes with vLLM's model contract (V1 engine).

Each class is our model class (same parameter names, same strict loader) plus:
- vLLM's constructor `(*, vllm_config, prefix="")`, `embed_input_ids`, `forward(input_ids,
  positions, intermediate_tensors=None, inputs_embeds=None)`, `compute_logits`, `load_weights`;
- `HasInnerState` + `IsHybrid` classmethods giving vLLM the GDN state shapes (vLLM layouts: conv
  "SD"/"DS", ssm `(Hv, Dv, Dk)`), dtypes (`mamba_ssm_dtype` honoured through vLLM's cache config)
  and state copy functions;
- Qwen3.5: `SupportsMRoPE` for text-only prompts (t = h = w = position).

The forward reads vLLM's forward context through `bridge` and runs our layers on vLLM's own cache
tensors through `OpsBackend`: reference ops on CPU, our Triton kernels on CUDA.
Supported: one GPU/CPU worker (TP = PP = 1), no speculative decoding, text-only inputs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from vllm.config import VllmConfig
from vllm.forward_context import get_forward_context
from vllm.logger import init_logger
from vllm.model_executor.layers.mamba.mamba_utils import (
    MambaStateCopyFuncCalculator,
    is_conv_state_dim_first,
)
from vllm.model_executor.models.interfaces import HasInnerState, IsHybrid, SupportsMRoPE

from deltaserve.models import qwen3_5, qwen3_next
from deltaserve.models.config import ModelConfig
from deltaserve.models.hybrid import HybridForCausalLM
from deltaserve.plugin.vllm import bridge
from deltaserve.plugin.vllm.layers import (
    GDNStateLayer,
    attention_layer_name,
    gdn_layer_name,
    gdn_state_dtypes,
    gdn_state_shapes,
    make_attention_layer,
)

# Under vLLM's "vllm" logger tree so the line shows in vLLM's own log output.
logger = init_logger(f"vllm.{__name__}")


class _VllmAdapter:
    """vLLM's side of the contract, mixed in front of one of our `HybridForCausalLM` classes."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        config = ModelConfig.from_hf(vllm_config.model_config.hf_config)
        parallel = vllm_config.parallel_config
        if parallel.tensor_parallel_size != 1 or parallel.pipeline_parallel_size != 1:
            raise ValueError(
                "vllm_config: the deltaserve vLLM plugin runs with tensor_parallel_size=1 and "
                "pipeline_parallel_size=1 only (set DELTASERVE_DISABLE_VLLM_PLUGIN=1 for vLLM's own model)"
            )
        if vllm_config.speculative_config is not None:
            raise ValueError(
                "vllm_config: speculative decoding is not supported by the deltaserve vLLM plugin"
            )
        if not config.full_layers or not config.linear_layers:
            raise ValueError("vllm_config: the model needs both full-attention and linear-attention layers")
        max_len = getattr(vllm_config.model_config, "max_model_len", None)
        if max_len is not None and max_len > config.max_position_embeddings:
            raise ValueError(  # the rotary table covers max_position_embeddings positions
                f"vllm_config: max_model_len {max_len} exceeds the model's max_position_embeddings "
                f"({config.max_position_embeddings}); the deltaserve plugin does not extend the context"
            )
        HybridForCausalLM.__init__(
            self,  # type: ignore[arg-type]
            config,
            dtype=vllm_config.model_config.dtype,
            device=torch.get_default_device(),
        )
        # Cache-declaring layers: children (no parameters) so vLLM's post-load hooks see them.
        self.vllm_attn = torch.nn.ModuleList(
            make_attention_layer(config, vllm_config, attention_layer_name(prefix, i))
            for i in config.full_layers
        )
        self.vllm_gdn = torch.nn.ModuleList(
            GDNStateLayer(config, vllm_config, gdn_layer_name(prefix, i)) for i in config.linear_layers
        )
        self._attn_names = [attention_layer_name(prefix, i) for i in config.full_layers]
        self._gdn_names = [gdn_layer_name(prefix, i) for i in config.linear_layers]
        cls = type(self)
        conv_dtype, ssm_dtype = gdn_state_dtypes(vllm_config)
        logger.info(
            "deltaserve: serving %s with %s.%s (GDN state dtypes: conv %s, ssm %s)",
            config.architecture,
            cls.__module__,
            cls.__qualname__,
            conv_dtype,
            ssm_dtype,
        )

    # ---- IsHybrid ---------------------------------------------------------------------------------
    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config: VllmConfig) -> tuple[tuple[int, ...], ...]:
        return gdn_state_shapes(ModelConfig.from_hf(vllm_config.model_config.hf_config), vllm_config)

    @classmethod
    def get_mamba_state_dtype_from_config(cls, vllm_config: VllmConfig) -> tuple[torch.dtype, ...]:
        return gdn_state_dtypes(vllm_config)

    @classmethod
    def get_mamba_state_copy_func(cls):
        return MambaStateCopyFuncCalculator.gated_delta_net_state_copy_func()

    # ---- model contract ---------------------------------------------------------------------------
    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, H]
        return self.model.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: object | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:  # [T_in] -> [T_in, H]
        """Hidden states after the final norm; rows past vLLM's `num_actual_tokens` are zeros."""
        t_in = int(input_ids.shape[0] if input_ids is not None else inputs_embeds.shape[0])
        metas = get_forward_context().attn_metadata
        if isinstance(metas, list):  # speculative layouts: [0] is the target model's dict
            metas = metas[0] if metas else None
        if not isinstance(metas, dict) or not metas:
            # Profiling / warm-up run: no caches bound, nothing to read or write.
            return torch.zeros(t_in, self.config.hidden_size, dtype=self.dtype, device=positions.device)
        cfg = self.config
        attn_metas = {i: metas[name] for i, name in zip(cfg.full_layers, self._attn_names)}
        gdn_metas = {i: metas[name] for i, name in zip(cfg.linear_layers, self._gdn_names)}
        states = bridge.state_tensors(
            {i: layer.kv_cache for i, layer in zip(cfg.full_layers, self.vllm_attn)},
            {i: layer.kv_cache for i, layer in zip(cfg.linear_layers, self.vllm_gdn)},
            num_kv_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim,
            conv_dim_first=is_conv_state_dim_first(),
            conv_width=cfg.linear_conv_kernel_dim,
        )
        batch = bridge.build_forward_batch(positions, attn_metas, gdn_metas, states)
        n = batch.num_tokens
        hidden = self.model(
            input_ids[:n] if input_ids is not None else None,
            batch,
            inputs_embeds[:n] if inputs_embeds is not None else None,
        )  # [n, H]
        if n == t_in:
            return hidden
        out = hidden.new_zeros(t_in, hidden.shape[-1])  # [T_in, H]
        out[:n] = hidden
        return out

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:  # [N, H] -> [N, V] fp32
        return HybridForCausalLM.compute_logits(self, hidden_states)  # type: ignore[arg-type]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Our strict loader on vLLM's (name, tensor) stream; returns the loaded parameter names."""
        return HybridForCausalLM.load_weights(self, weights)  # type: ignore[arg-type]


class _TextMRoPE:
    """`SupportsMRoPE` for text-only prompts: the t, h and w positions all equal the token index."""

    def get_mrope_input_positions(
        self, input_tokens: list[int], mm_features: list
    ) -> tuple[torch.Tensor, int]:
        if mm_features:
            raise ValueError("mm_features: the deltaserve vLLM plugin serves text-only prompts")
        positions = torch.arange(len(input_tokens), dtype=torch.int64)  # [T]
        return positions.unsqueeze(0).expand(3, -1).clone(), 0  # [3, T], delta 0


class Qwen3NextForCausalLM(_VllmAdapter, qwen3_next.Qwen3NextForCausalLM, HasInnerState, IsHybrid):
    pass


class Qwen3_5ForCausalLM(
    _VllmAdapter, _TextMRoPE, qwen3_5.Qwen3_5ForCausalLM, HasInnerState, IsHybrid, SupportsMRoPE
):
    pass


class Qwen3_5MoeForCausalLM(
    _VllmAdapter, _TextMRoPE, qwen3_5.Qwen3_5MoeForCausalLM, HasInnerState, IsHybrid, SupportsMRoPE
):
    pass


class Qwen3_5ForConditionalGeneration(
    _VllmAdapter, _TextMRoPE, qwen3_5.Qwen3_5ForConditionalGeneration, HasInnerState, IsHybrid, SupportsMRoPE
):
    pass


class Qwen3_5MoeForConditionalGeneration(
    _VllmAdapter,
    _TextMRoPE,
    qwen3_5.Qwen3_5MoeForConditionalGeneration,
    HasInnerState,
    IsHybrid,
    SupportsMRoPE,
):
    pass
