"""`SGLangModelMixin`: SGLang's model-class contract on top of a deltaserve model class.

SGLang builds `cls(config=hf_config, quant_config=...)` under its default dtype and device, calls
`load_weights(iterable of (name, tensor))`, then `forward(input_ids, positions, forward_batch,
**kw)` and expects a `LogitsProcessorOutput`, which SGLang's own `LogitsProcessor` makes from our
final hidden states and `lm_head` (so sampling, logprobs and the TP gather stay SGLang's). The
decoder itself is ours, fed through `bridge.SGLangBridge` with SGLang's own state pools.

sglang is imported when a class is built (SGLang's `LogitsProcessor`, its parallel state), not
when this module is imported; `doctor.py` imports those pieces eagerly to fail loudly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from deltaserve.models.config import ModelConfig
from deltaserve.plugin.sglang.bridge import SGLangBridge, UnsupportedBatchError
from deltaserve.plugin.sglang.version import detect_ssm_layout


def _hf_text_config(config: Any) -> Any:
    """The language model's HF config (`text_config` of the multimodal roots)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _parallel_sizes() -> tuple[int, int]:
    """(tensor-parallel, pipeline-parallel) world sizes of SGLang's model-parallel groups."""
    from sglang.srt.distributed.parallel_state import get_pp_group, get_tensor_model_parallel_world_size

    return get_tensor_model_parallel_world_size(), get_pp_group().world_size


class SGLangModelMixin:
    """Mix in before a `deltaserve.models.hybrid.HybridForCausalLM` subclass of the same name."""

    # Our fused modules, keyed like SGLang's: lets quantisation ignore lists written with
    # checkpoint names match them.
    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
        "in_proj_qkvz": ["in_proj_qkv", "in_proj_z"],
        "in_proj_ba": ["in_proj_b", "in_proj_a"],
    }

    def __init__(self, config: Any, quant_config: Any = None, prefix: str = "") -> None:
        from sglang.srt.layers.logits_processor import LogitsProcessor

        ds_config = ModelConfig.from_hf(config)
        if quant_config is not None and not ds_config.quantization:
            raise NotImplementedError(
                f"quant_config: online quantisation ({type(quant_config).__name__}) is not supported by "
                "deltaserve's SGLang plugin; serve a pre-quantised checkpoint or drop --quantization"
            )
        tp, pp = _parallel_sizes()
        if tp != 1 or pp != 1:
            raise NotImplementedError(
                f"deltaserve's SGLang plugin runs with tp_size=1 and pp_size=1 for now (got tp={tp}, pp={pp})"
            )
        super().__init__(ds_config, dtype=torch.get_default_dtype(), device=torch.get_default_device())
        self.hf_config = config
        self.quant_config = quant_config
        self.logits_processor = LogitsProcessor(_hf_text_config(config))
        self.bridge = SGLangBridge(ds_config, detect_ssm_layout())

    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        positions: torch.Tensor,  # [T]
        forward_batch: Any,
        input_embeds: torch.Tensor | None = None,  # [T, H]
        get_embedding: bool = False,
        pp_proxy_tensors: Any = None,
        **kwargs: Any,
    ) -> Any:
        """SGLang's forward: our decoder over SGLang's pools, then SGLang's `LogitsProcessor`."""
        if get_embedding:
            raise UnsupportedBatchError("get_embedding (embedding/pooling mode)")
        if pp_proxy_tensors is not None:
            raise UnsupportedBatchError("pp_proxy_tensors (pipeline parallelism)")
        mm_check = getattr(forward_batch, "contains_mm_inputs", None)
        if callable(mm_check) and mm_check():
            raise UnsupportedBatchError("image/video inputs (the vision tower is not served yet)")
        batch = self.bridge.forward_batch(forward_batch, positions)
        if batch is None:  # IDLE: no tokens on this rank
            hidden = torch.empty(0, self.config.hidden_size, dtype=self.dtype, device=input_ids.device)
        else:
            hidden = self.model(input_ids, batch, input_embeds)  # [T, H]
        return self.logits_processor(input_ids, hidden, self.lm_head, forward_batch)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Strict load through deltaserve's loader; returns the loaded parameter names."""
        return super().load_weights(weights)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.embed_tokens

    def get_embed_and_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedding and LM-head weights, shared with a speculative draft model."""
        return self.model.embed_tokens.weight, self.lm_head.weight

    def set_embed_and_head(self, embed: torch.Tensor, head: torch.Tensor) -> None:
        """Adopt a target model's embedding and LM head (speculative draft side)."""
        del self.model.embed_tokens.weight
        del self.lm_head.weight
        self.model.embed_tokens.weight = _as_param(embed)
        self.lm_head.weight = _as_param(head)


def _as_param(t: torch.Tensor) -> torch.nn.Parameter:
    return t if isinstance(t, torch.nn.Parameter) else torch.nn.Parameter(t, requires_grad=False)
