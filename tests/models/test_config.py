"""ModelConfig.from_hf: every family, both config styles, and clear errors."""

from __future__ import annotations

import pytest
from transformers import Qwen3_5Config, Qwen3_5MoeTextConfig, Qwen3_5TextConfig, Qwen3NextConfig

from deltaserve.models.config import FULL, LINEAR, ConfigError, ModelConfig


def _next_dict(**over) -> dict:
    d = Qwen3NextConfig().to_dict()
    d["architectures"] = ["Qwen3NextForCausalLM"]
    d.update(over)
    return d


def test_qwen3_next_defaults_match_the_release_card() -> None:
    cfg = ModelConfig.from_hf(_next_dict())
    assert cfg.family == "qwen3_next" and cfg.architecture == "Qwen3NextForCausalLM"
    assert cfg.layer_types[:4] == (LINEAR, LINEAR, LINEAR, FULL)
    assert len(cfg.full_layers) == 12 and len(cfg.linear_layers) == 36
    assert cfg.rotary_dim == 64 and cfg.mrope_section is None
    assert cfg.conv_dim == 2 * 16 * 128 + 32 * 128
    assert cfg.is_moe and cfg.num_experts == 512 and cfg.num_experts_per_tok == 10
    assert all(cfg.is_moe_layer(i) for i in range(48))


def test_legacy_flat_rope_and_interval_style() -> None:
    d = _next_dict(rope_theta=1e7, partial_rotary_factor=0.25, full_attention_interval=2)
    for key in ("rope_parameters", "layer_types"):
        d.pop(key)
    cfg = ModelConfig.from_hf(d)
    assert cfg.rope_theta == 1e7
    assert cfg.layer_types[:4] == (LINEAR, FULL, LINEAR, FULL)


def test_mlp_only_layers_and_sparse_step() -> None:
    cfg = ModelConfig.from_hf(_next_dict(mlp_only_layers=[0], decoder_sparse_step=2))
    assert [cfg.is_moe_layer(i) for i in range(4)] == [False, True, False, True]


def test_qwen3_5_text_and_moe() -> None:
    dense = ModelConfig.from_hf(Qwen3_5TextConfig().to_dict())
    assert dense.family == "qwen3_5" and not dense.is_moe and dense.intermediate_size == 12288
    assert dense.mrope_section == (11, 11, 10) and dense.mrope_interleaved
    moe = ModelConfig.from_hf(Qwen3_5MoeTextConfig().to_dict())
    assert moe.family == "qwen3_5_moe" and moe.num_experts == 256 and moe.norm_topk_prob


def test_multimodal_root_reads_text_config() -> None:
    d = Qwen3_5Config().to_dict()
    d["text_config"]["mamba_ssm_dtype"] = "float32"
    cfg = ModelConfig.from_hf(d)
    assert cfg.multimodal and cfg.architecture == "Qwen3_5ForConditionalGeneration"
    assert cfg.model_type == "qwen3_5_text" and cfg.mamba_ssm_dtype == "float32"


def test_config_is_frozen() -> None:
    cfg = ModelConfig.from_hf(_next_dict())
    with pytest.raises(AttributeError):
        cfg.hidden_size = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(model_type="llama"), "unsupported model_type 'llama'"),
        (lambda d: d.pop("hidden_size"), "missing required field 'hidden_size'"),
        (lambda d: d.pop("linear_num_value_heads"), "'linear_num_value_heads'"),
        (lambda d: d.update(linear_num_value_heads=5, linear_num_key_heads=2), "multiple of"),
        (lambda d: d.update(layer_types=["linear_attention"] * 3), "layer_types has 3 entries"),
        (lambda d: d.update(layer_types=["mamba"] * 48), "layer_types[0] = 'mamba'"),
        (lambda d: d.update(num_attention_heads="x"), "must be an integer"),
        (lambda d: (d.pop("layer_types"), d.pop("full_attention_interval", None)), "full_attention_interval"),
    ],
)
def test_clear_errors(mutate, message: str) -> None:
    d = _next_dict()
    mutate(d)
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_hf(d)
    assert message in str(info.value)


def test_missing_config_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no config.json"):
        ModelConfig.from_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        ModelConfig.from_hf(tmp_path)
