"""The transformers reference model of a tiny checkpoint (CPU, offline)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from deltaserve.testing.fp8 import is_fp8_checkpoint, make_temp_dequantized
from deltaserve.testing.specs import ARCHITECTURES


def load_hf_model(
    ckpt_dir: str | Path, dtype: torch.dtype = torch.float32, **kwargs: object
) -> torch.nn.Module:
    """Load a local checkpoint with the transformers class named in its config, eval mode, on CPU.

    Only local files are read (`local_files_only=True`; a path that is not a checkpoint directory
    raises instead of being looked up on the Hub). An FP8 checkpoint is loaded from a temporary copy
    with its weights dequantised exactly (q * scale_inv). Extra kwargs go to `from_pretrained`.
    """
    import transformers

    path = Path(ckpt_dir)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"ckpt_dir: {path} has no config.json")
    archs = json.loads(config_file.read_text()).get("architectures") or []
    if not archs or archs[0] not in ARCHITECTURES:
        raise ValueError(f"ckpt_dir: architectures {archs} in {config_file} is not one of {ARCHITECTURES}")
    cls = getattr(transformers, archs[0])
    # transformers wants accelerate (and a GPU) for FP8 checkpoints: load exactly dequantised weights
    if is_fp8_checkpoint(path):
        tmp = make_temp_dequantized(path)
        try:
            model = cls.from_pretrained(str(tmp), dtype=dtype, local_files_only=True, **kwargs)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        model = cls.from_pretrained(str(path), dtype=dtype, local_files_only=True, **kwargs)
    return model.eval()


@torch.no_grad()
def hf_greedy(model: torch.nn.Module, prompt: list[int], num_tokens: int) -> list[int]:
    """Plain argmax decoding with the HF model's own cache (recurrent path for the GDN layers).

    Unlike `generate`, nothing is suppressed or stopped at end-of-sequence tokens: the oracle for
    "exactly transformers' greedy tokens" of a raw argmax loop.
    """
    out = model(torch.tensor([prompt]), use_cache=True)
    tokens: list[int] = []
    for _ in range(num_tokens):
        tokens.append(int(out.logits[0, -1].argmax()))
        cache = getattr(out, "past_key_values", None)
        if cache is None:
            cache = out.cache
        out = model(torch.tensor([[tokens[-1]]]), past_key_values=cache, use_cache=True)
    return tokens
