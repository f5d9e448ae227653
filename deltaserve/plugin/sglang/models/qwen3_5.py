"""SGLang entries for the Qwen3.5 family (dense / MoE, multimodal roots and text-only), served by
deltaserve's Qwen3.5 implementation (text path; image inputs are refused with a named error)."""

from __future__ import annotations

from deltaserve.models import qwen3_5 as _ds
from deltaserve.plugin.sglang.model import SGLangModelMixin


class Qwen3_5ForConditionalGeneration(SGLangModelMixin, _ds.Qwen3_5ForConditionalGeneration):
    """deltaserve's dense Qwen3.5 (multimodal checkpoint root, text path)."""


class Qwen3_5MoeForConditionalGeneration(SGLangModelMixin, _ds.Qwen3_5MoeForConditionalGeneration):
    """deltaserve's Qwen3.5 MoE (multimodal checkpoint root, text path)."""


class Qwen3_5ForCausalLM(SGLangModelMixin, _ds.Qwen3_5ForCausalLM):
    """deltaserve's dense Qwen3.5, text-only checkpoint."""


class Qwen3_5MoeForCausalLM(SGLangModelMixin, _ds.Qwen3_5MoeForCausalLM):
    """deltaserve's Qwen3.5 MoE, text-only checkpoint."""


EntryClass = [
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3_5ForCausalLM,
    Qwen3_5MoeForCausalLM,
]
