"""Strict loading: missing / unexpected / reshaped tensors are named with their file; skips counted."""

from __future__ import annotations

import json

import pytest
import torch

from deltaserve.loader import CheckpointError, CheckpointReader, WeightLoadError, load_checkpoint
from deltaserve.models.config import ConfigError, ModelConfig
from deltaserve.models.registry import load_model, model_class
from deltaserve.testing import make_corrupted_copy, tensor_index


def _build(path):
    config = ModelConfig.from_hf(path)
    return model_class(config.architecture)(config, dtype=torch.float32)


@pytest.mark.parametrize(
    "preset, tensor",
    [
        ("qwen3-next-a", "model.layers.0.linear_attn.in_proj_qkvz.weight"),
        ("qwen3-next-a", "model.layers.3.self_attn.k_proj.weight"),
        ("qwen3-next-a", "model.layers.1.mlp.experts.5.up_proj.weight"),
        ("qwen3.5-moe-b", "model.layers.2.mlp.experts.gate_up_proj"),
        ("qwen3.5-vl-dense", "model.language_model.layers.1.linear_attn.in_proj_z.weight"),
        ("qwen3.5-dense-a", "model.norm.weight"),
    ],
)
def test_missing_tensor_is_named(tiny_checkpoint, tmp_path, preset: str, tensor: str) -> None:
    bad = make_corrupted_copy(tiny_checkpoint(preset), tmp_path / "bad", remove=tensor)
    with pytest.raises(WeightLoadError, match="is missing 1 tensor") as info:
        load_checkpoint(_build(bad), bad)
    assert repr(tensor) in str(info.value)


def test_renamed_tensor_is_named_with_its_file(tiny_checkpoint, tmp_path) -> None:
    src = tiny_checkpoint("qwen3.5-moe-a")  # several shards
    old = "model.layers.0.mlp.shared_expert_gate.weight"
    new = "model.layers.0.mlp.shared_expert_gatex.weight"
    bad = make_corrupted_copy(src, tmp_path / "bad", rename=(old, new))
    file = tensor_index(bad)[new][2]
    with pytest.raises(WeightLoadError) as info:
        load_checkpoint(_build(bad), bad)
    msg = str(info.value)
    assert "unexpected checkpoint tensor" in msg and repr(new) in msg and file in msg


@pytest.mark.parametrize(
    "preset, tensor, shape",
    [
        ("qwen3-next-a", "model.layers.0.linear_attn.in_proj_ba.weight", (7, 64)),
        ("qwen3-next-a", "model.layers.0.linear_attn.conv1d.weight", (3, 1, 4)),
        ("qwen3.5-moe-a", "model.layers.1.mlp.experts.0.down_proj.weight", (64, 31)),
        ("qwen3.5-dense-b", "model.embed_tokens.weight", (511, 48)),
    ],
)
def test_reshaped_tensor_is_named(tiny_checkpoint, tmp_path, preset, tensor, shape) -> None:
    bad = make_corrupted_copy(tiny_checkpoint(preset), tmp_path / "bad", reshape=(tensor, shape))
    file = tensor_index(bad)[tensor][2]
    with pytest.raises(WeightLoadError) as info:
        load_checkpoint(_build(bad), bad)
    msg = str(info.value)
    assert repr(tensor) in msg and file in msg and "shape" in msg


def test_skipped_prefixes_are_counted(tiny_checkpoint) -> None:
    path = tiny_checkpoint("qwen3.5-vl-moe")
    names = tensor_index(path)
    report = load_checkpoint(_build(path), path)
    assert report.skipped.get("model.visual.", 0) == sum(n.startswith("model.visual.") for n in names) > 0
    assert report.skipped.get("mtp.", 0) == sum(n.startswith("mtp.") for n in names)
    assert report.num_tensors == len(names)


def test_tied_lm_head_in_checkpoint_is_not_unexpected(tiny_checkpoint) -> None:
    model = load_model(tiny_checkpoint("qwen3.5-dense-a"))
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_non_hybrid_model_type_is_refused(tmp_path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]})
    )
    with pytest.raises(ConfigError, match="unsupported model_type 'qwen2'.*hybrid Gated-DeltaNet"):
        load_model(tmp_path)


def test_reader_errors_name_the_file(tiny_checkpoint, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        CheckpointReader(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        CheckpointReader(tmp_path)
    src = tiny_checkpoint("qwen3.5-moe-a")
    bad = make_corrupted_copy(src, tmp_path / "bad", remove="model.norm.weight")
    shard = sorted(p for p in bad.glob("*.safetensors"))[-1]
    shard.write_bytes(b"\x00" * 16)  # truncated / garbage shard
    with pytest.raises(CheckpointError, match=shard.name):
        list(CheckpointReader(bad))
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"lists shard {shard.name}, which is missing"):
        CheckpointReader(bad)


def test_reader_streams_one_tensor_at_a_time(tiny_checkpoint, monkeypatch) -> None:
    """Tensors come from per-name `get_tensor` calls, lazily, never a whole-shard load."""
    import deltaserve.loader.safetensors_io as io

    calls: list[str] = []
    real = io.safe_open

    class Spy:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def keys(self):
            return self.f.keys()

        def get_tensor(self, name):
            calls.append(name)
            return self.f.get_tensor(name)

    monkeypatch.setattr(io, "safe_open", Spy)
    reader = CheckpointReader(tiny_checkpoint("qwen3.5-moe-a"))
    it = iter(reader)
    next(it)
    assert len(calls) == 1
    rest = list(it)
    assert len(calls) == 1 + len(rest) == len(reader.names)
