"""Qwen3.5 / Qwen3.6, dense and MoE, text-only roots and the multimodal roots' text path.

Same decoder as Qwen3-Next with split GDN projections (`in_proj_qkv`, `in_proj_z`, `in_proj_b`,
`in_proj_a`) and interleaved mRoPE (sections t/h/w over the 64 rotary dims). Dense models use a
SwiGLU MLP; MoE models a top-k sparse MoE with a shared expert in every layer.
The multimodal checkpoints keep the language model under `model.language_model.*` and the vision
tower under `model.visual.*` (skipped: the vision path is not served yet). `mtp.*` is skipped.
"""

from __future__ import annotations

from deltaserve.loader.names import COMMON_RULES, SPLIT_GDN_RULES, NameRules
from deltaserve.models.hybrid import HybridForCausalLM

_TEXT_RULES = NameRules(rules=SPLIT_GDN_RULES + COMMON_RULES, skip_prefixes=("mtp.",))
_MULTIMODAL_RULES = NameRules(
    rules=SPLIT_GDN_RULES + COMMON_RULES,
    prefix_rewrites=(("model.language_model.", "model."),),
    skip_prefixes=("mtp.", "model.visual."),
)


class Qwen3_5ForCausalLM(HybridForCausalLM):
    name_rules = _TEXT_RULES


class Qwen3_5MoeForCausalLM(HybridForCausalLM):
    name_rules = _TEXT_RULES


class Qwen3_5ForConditionalGeneration(HybridForCausalLM):
    """Text path of the multimodal root (image inputs are not supported yet)."""

    name_rules = _MULTIMODAL_RULES


class Qwen3_5MoeForConditionalGeneration(HybridForCausalLM):
    """Text path of the multimodal MoE root (image inputs are not supported yet)."""

    name_rules = _MULTIMODAL_RULES
