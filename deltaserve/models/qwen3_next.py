"""Qwen3-Next (`Qwen3NextForCausalLM`, e.g. Qwen3-Next-80B-A3B).

48 layers, 3 Gated DeltaNet : 1 gated full attention; every layer's MLP is a 512-expert top-10
sparse MoE with a sigmoid-gated shared expert. The GDN projections come fused and interleaved per
key-head group (`in_proj_qkvz`, `in_proj_ba`). Multi-token-prediction weights (`mtp.*`) are skipped.
"""

from __future__ import annotations

from deltaserve.loader.names import COMMON_RULES, NameRules
from deltaserve.models.hybrid import HybridForCausalLM


class Qwen3NextForCausalLM(HybridForCausalLM):
    interleaved_gdn = True
    name_rules = NameRules(rules=COMMON_RULES, skip_prefixes=("mtp.",))
