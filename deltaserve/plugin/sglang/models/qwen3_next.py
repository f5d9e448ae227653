"""SGLang entry for `Qwen3NextForCausalLM`, served by deltaserve's Qwen3-Next implementation."""

from __future__ import annotations

from deltaserve.models import qwen3_next as _ds
from deltaserve.plugin.sglang.model import SGLangModelMixin


class Qwen3NextForCausalLM(SGLangModelMixin, _ds.Qwen3NextForCausalLM):
    """deltaserve's Qwen3-Next under SGLang's model contract."""


EntryClass = [Qwen3NextForCausalLM]
