"""deltaserve: inference engine for the hybrid Gated-DeltaNet family (Qwen3-Next, Qwen3.5).

`import deltaserve` stays light: `LLM`, `SamplingParams`, `AsyncEngine` and `EngineConfig` are
imported on first access.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "LLM": ("deltaserve.entrypoints.llm", "LLM"),
    "SamplingParams": ("deltaserve.engine.sampling_params", "SamplingParams"),
    "RequestOutput": ("deltaserve.engine.outputs", "RequestOutput"),
    "CompletionOutput": ("deltaserve.engine.outputs", "CompletionOutput"),
    "EngineConfig": ("deltaserve.config", "EngineConfig"),
    "AsyncEngine": ("deltaserve.engine.async_engine", "AsyncEngine"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deltaserve' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
