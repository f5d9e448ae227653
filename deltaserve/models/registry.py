"""Architecture name -> model class, imported lazily."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from deltaserve.models.config import ConfigError, ModelConfig

_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "Qwen3NextForCausalLM": ("deltaserve.models.qwen3_next", "Qwen3NextForCausalLM"),
    "Qwen3_5ForCausalLM": ("deltaserve.models.qwen3_5", "Qwen3_5ForCausalLM"),
    "Qwen3_5MoeForCausalLM": ("deltaserve.models.qwen3_5", "Qwen3_5MoeForCausalLM"),
    "Qwen3_5ForConditionalGeneration": ("deltaserve.models.qwen3_5", "Qwen3_5ForConditionalGeneration"),
    "Qwen3_5MoeForConditionalGeneration": ("deltaserve.models.qwen3_5", "Qwen3_5MoeForConditionalGeneration"),
}

SUPPORTED_ARCHITECTURES = tuple(_ARCHITECTURES)


def model_class(architecture: str) -> type:
    """The model class serving `architecture` (an HF `architectures[0]` string)."""
    try:
        module, name = _ARCHITECTURES[architecture]
    except KeyError:
        raise ConfigError(
            f"unsupported architecture {architecture!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        ) from None
    return getattr(importlib.import_module(module), name)


def load_model(path: str | Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
    """Build the model for the checkpoint at `path` and stream its weights in (strict)."""
    from deltaserve.loader.load import load_checkpoint

    config = ModelConfig.from_hf(path)
    cls = model_class(config.architecture)
    with torch.device(device):
        model = cls(config, dtype=dtype, device=device)
    load_checkpoint(model, path)
    return model.eval()
