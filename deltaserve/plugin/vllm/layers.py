"""The layers vLLM sees: they declare our caches to vLLM and receive the tensors it allocates.

vLLM sizes and allocates every cache from the layers registered in
`compilation_config.static_forward_context`, builds their metadata with the backend each names, and
binds the tensors back onto them (`layer.kv_cache`). Our model's own mixers run the math; these
layers only carry the contract:

- full attention: vLLM's own `Attention` (its KV spec, backend and metadata builder), never called;
- Gated DeltaNet: `GDNStateLayer`, a `MambaBase` of type `GDN_ATTN` with vLLM's state shapes
  (conv `(W-1, conv_dim)` "SD" or `(conv_dim, W-1)` "DS", ssm `(Hv, Dv, Dk)`) and dtypes
  (`--mamba-cache-dtype`, `--mamba-ssm-cache-dtype`, for Qwen3.5 the config's `mamba_ssm_dtype`).

Layer names are `{prefix}model.layers.{i}.self_attn.attn` and `{prefix}model.layers.{i}.linear_attn`,
as in vLLM's own implementation (vLLM reads the layer index out of the name).
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.mamba.abstract import MambaBase
from vllm.model_executor.layers.mamba.mamba_utils import (
    MambaStateDtypeCalculator,
    MambaStateShapeCalculator,
)
from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

from deltaserve.models.config import ModelConfig


def attention_layer_name(prefix: str, layer: int) -> str:
    return f"{prefix}model.layers.{layer}.self_attn.attn"


def gdn_layer_name(prefix: str, layer: int) -> str:
    return f"{prefix}model.layers.{layer}.linear_attn"


def gdn_state_shapes(config: ModelConfig, vllm_config: VllmConfig) -> tuple[tuple[int, ...], ...]:
    """vLLM's per-slot GDN state shapes `(conv, ssm)` for this model (TP and spec tokens applied)."""
    spec = vllm_config.speculative_config
    return MambaStateShapeCalculator.gated_delta_net_state_shape(
        vllm_config.parallel_config.tensor_parallel_size,
        config.linear_num_key_heads,
        config.linear_num_value_heads,
        config.linear_key_head_dim,
        config.linear_value_head_dim,
        config.linear_conv_kernel_dim,
        spec.num_speculative_tokens if spec is not None else 0,
    )


def gdn_state_dtypes(vllm_config: VllmConfig) -> tuple[torch.dtype, ...]:
    """vLLM's GDN state dtypes `(conv, ssm)` from the cache config (honours `mamba_ssm_cache_dtype`)."""
    cache = vllm_config.cache_config
    return MambaStateDtypeCalculator.gated_delta_net_state_dtype(
        vllm_config.model_config.dtype, cache.mamba_cache_dtype, cache.mamba_ssm_cache_dtype
    )


class GDNStateLayer(nn.Module, MambaBase):
    """Declares one Gated DeltaNet layer's `(conv, ssm)` state to vLLM; holds the bound views."""

    def __init__(self, config: ModelConfig, vllm_config: VllmConfig, prefix: str) -> None:
        nn.Module.__init__(self)
        self.prefix = prefix
        self._shapes = tuple(gdn_state_shapes(config, vllm_config))
        self._dtypes = tuple(gdn_state_dtypes(vllm_config))
        self.kv_cache: tuple[torch.Tensor, ...] = (torch.tensor([]), torch.tensor([]))
        context = vllm_config.compilation_config.static_forward_context
        if prefix in context:
            raise ValueError(f"prefix: duplicate layer name {prefix!r}")
        context[prefix] = self

    @property
    def mamba_type(self) -> MambaAttentionBackendEnum:
        return MambaAttentionBackendEnum.GDN_ATTN

    def get_state_shape(self) -> tuple[tuple[int, ...], ...]:
        return self._shapes

    def get_state_dtype(self) -> tuple[torch.dtype, ...]:
        return self._dtypes


def make_attention_layer(config: ModelConfig, vllm_config: VllmConfig, prefix: str) -> Attention:
    """vLLM's `Attention` for one full-attention layer: registers the KV spec and metadata backend.

    Its forward is never called; our `GatedAttention` reads and writes the bound KV tensor.
    """
    return Attention(
        num_heads=config.num_attention_heads,
        head_size=config.head_dim,
        scale=config.head_dim**-0.5,
        num_kv_heads=config.num_key_value_heads,
        cache_config=vllm_config.cache_config,
        quant_config=None,
        prefix=prefix,
    )
