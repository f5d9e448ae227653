"""`testing.fp8.official_fp8_tensors` (the benchmarks' on-the-fly FP8 checkpoint) loads into exactly
the model an FP8 checkpoint on disk gives."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from deltaserve.models.config import ModelConfig
from deltaserve.models.registry import load_model, model_class
from deltaserve.ops.fp8 import FP8_DTYPE
from deltaserve.testing import build_hf_model
from deltaserve.testing.fp8 import official_fp8_tensors, quantization_config_for
from deltaserve.testing.specs import SPECS


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == FP8_DTYPE else t


@pytest.mark.parametrize("name", ["qwen3-next-a", "qwen3.5-moe-a"])
def test_in_memory_fp8_equals_fp8_checkpoint(tiny_checkpoint, tmp_path, name: str) -> None:
    spec = SPECS[name].replace(quantize_fp8=True, with_mtp=False)  # transformers has no MTP weights
    on_disk = load_model(tiny_checkpoint(spec))
    hf = build_hf_model(
        spec, seed=0
    )  # the checkpoint's weights (seed 0), fused experts as transformers holds them
    cfg = json.loads((tiny_checkpoint(spec) / "config.json").read_text())
    assert quantization_config_for(n for n, _ in hf.named_parameters()) == cfg["quantization_config"]
    for f in tiny_checkpoint(spec).glob("*.json"):
        shutil.copyfile(f, tmp_path / f.name)
    config = ModelConfig.from_hf(tmp_path)
    model = model_class(config.architecture)(config, dtype=on_disk.dtype)
    loaded = model.load_weights(official_fp8_tensors(hf.named_parameters()))
    assert loaded == {n for n, _ in on_disk.named_parameters()}
    theirs = dict(on_disk.state_dict())
    n_fp8 = 0
    for key, t in model.state_dict().items():
        assert t.dtype == theirs[key].dtype, key
        assert torch.equal(_bits(t), _bits(theirs[key])), key
        n_fp8 += t.dtype == FP8_DTYPE
    assert n_fp8 > 0
