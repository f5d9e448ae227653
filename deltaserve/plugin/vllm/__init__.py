"""deltaserve inside upstream vLLM, through the `vllm.general_plugins` entry point.

vLLM calls `register()` in every process it starts (API server, engine core, workers). It maps the
five hybrid Gated-DeltaNet architectures to deltaserve's model classes in
`deltaserve.plugin.vllm.models`, by "module:Class" string so nothing is imported until vLLM builds
the model. `DELTASERVE_DISABLE_VLLM_PLUGIN=1` turns the plugin off: vLLM then runs its own classes.

This module imports neither vllm nor torch at import time; `import deltaserve` never imports it.
"""

from __future__ import annotations

ARCHITECTURES = (
    "Qwen3NextForCausalLM",
    "Qwen3_5ForCausalLM",
    "Qwen3_5MoeForCausalLM",
    "Qwen3_5ForConditionalGeneration",
    "Qwen3_5MoeForConditionalGeneration",
)
MODELS_MODULE = "deltaserve.plugin.vllm.models"
DISABLE_ENV = "DELTASERVE_DISABLE_VLLM_PLUGIN"


def is_disabled() -> bool:
    """True when `DELTASERVE_DISABLE_VLLM_PLUGIN` is set to a true value (1/true/yes/on)."""
    from deltaserve import env

    return bool(env.get(DISABLE_ENV))


def registrations() -> dict[str, str]:
    """Architecture name -> lazy "module:Class" reference that `register()` hands to vLLM."""
    return {arch: f"{MODELS_MODULE}:{arch}" for arch in ARCHITECTURES}


def served_class(model: object) -> str:
    """`module.Class` of the model a vLLM worker runs (for `LLM.apply_model` checks in tests/CI)."""
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def register() -> None:
    """Entry point of `vllm.general_plugins`: register our classes (re-entrant, lazy, overriding).

    Registering an existing name replaces vLLM's built-in class; calling this again is harmless.
    """
    if is_disabled():
        return
    from vllm import ModelRegistry

    for arch, ref in registrations().items():
        ModelRegistry.register_model(arch, ref)
