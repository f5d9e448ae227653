"""Block-FP8 checkpoints in the official layout: load, stay FP8, and match the dequantised model."""

from __future__ import annotations

import json

import pytest
import torch

from deltaserve.loader import WeightLoadError
from deltaserve.models.config import ConfigError, ModelConfig
from deltaserve.models.registry import load_model
from deltaserve.ops.fp8 import FP8_DTYPE
from deltaserve.testing import SPECS, make_corrupted_copy
from deltaserve.testing.fp8 import dequantized_copy
from deltaserve.testing.harness import StaticRunner

FP8_PRESETS = {
    "qwen3-next": SPECS["qwen3-next-a"].replace(quantize_fp8=True),
    "qwen3.5-moe": SPECS["qwen3.5-moe-a"].replace(quantize_fp8=True),
}


@pytest.fixture(scope="module")
def fp8_pair(tiny_checkpoint, tmp_path_factory):
    cache = {}

    def get(key: str):
        if key not in cache:
            path = tiny_checkpoint(FP8_PRESETS[key])
            deq = dequantized_copy(path, tmp_path_factory.mktemp(f"deq-{key}"))
            cache[key] = (path, load_model(path), load_model(deq))
        return cache[key]

    return get


@pytest.mark.parametrize("key", list(FP8_PRESETS))
def test_fp8_weights_stay_fp8_and_unconverted_modules_do_not(fp8_pair, key: str) -> None:
    _, model, _ = fp8_pair(key)
    layer0 = model.model.layers[0]
    assert layer0.linear_attn.in_proj_qkvz.weight.dtype == FP8_DTYPE
    assert layer0.linear_attn.out_proj.weight.dtype == FP8_DTYPE
    assert layer0.mlp.experts.gate_up_proj.dtype == FP8_DTYPE
    assert layer0.linear_attn.in_proj_ba.weight.dtype == torch.float32  # kept (modules_to_not_convert)
    assert layer0.mlp.gate.weight.dtype == torch.float32
    assert model.lm_head.weight.dtype == torch.float32
    for name, p in model.named_parameters():
        assert not torch.isnan(p.float()).any(), f"{name} has unloaded entries"


@pytest.mark.parametrize("key", list(FP8_PRESETS))
def test_fp8_plain_row_flag_matches_row_map(fp8_pair, key: str) -> None:
    """A linear hands the GEMM `row_block=None` (one scale per 128-row tile) only when its loaded row
    map really is `n // 128`: merged shards of 128-multiple sizes yes, permuted or ragged no."""
    _, model, _ = fp8_pair(key)
    seen = 0
    for name, mod in model.named_modules():
        if getattr(mod, "weight", None) is None or mod.weight.dtype != FP8_DTYPE or mod.weight.dim() != 2:
            continue
        rows = mod.weight_row_block.cpu()
        plain = torch.equal(rows, torch.arange(rows.numel()) // 128)
        assert mod.fp8_rows_plain == plain, name
        seen += 1
    assert seen > 0


@pytest.mark.parametrize("key", list(FP8_PRESETS))
def test_fp8_greedy_matches_dequantised_model(fp8_pair, key: str) -> None:
    _, fp8, deq = fp8_pair(key)
    prompts = [[3], list(range(20, 57)), [(7 * i) % 500 for i in range(90)]]
    runners = StaticRunner(fp8), StaticRunner(deq)
    last = [[o[-1] for o in r.step(list(enumerate(prompts)))] for r in runners]
    tokens: list[list[int]] = [[], [], []]
    for _ in range(32):
        for i in range(3):
            a, b = last[0][i], last[1][i]
            top2 = b.topk(2).values
            ta, tb = int(a.argmax()), int(b.argmax())
            assert ta == tb or float(top2[0] - top2[1]) < 1e-2, (
                f"prompt {i} diverged at step {len(tokens[i])}"
            )
            tokens[i].append(tb)
        last = [[o[-1] for o in r.step([(i, [tokens[i][-1]]) for i in range(3)])] for r in runners]


def test_missing_scale_is_named(tiny_checkpoint, tmp_path) -> None:
    src = tiny_checkpoint(FP8_PRESETS["qwen3-next"])
    name = "model.layers.1.mlp.experts.2.down_proj.weight_scale_inv"
    bad = make_corrupted_copy(src, tmp_path / "bad", remove=name)
    with pytest.raises(WeightLoadError, match=repr(name).replace(".", r"\.")):
        load_model(bad)


@pytest.mark.parametrize(
    "quant, message",
    [
        ({"quant_method": "gptq"}, "quant_method 'gptq'"),
        ({"quant_method": "fp8", "fmt": "e5m2", "weight_block_size": [128, 128]}, "fmt 'e5m2'"),
        ({"quant_method": "fp8", "activation_scheme": "static", "weight_block_size": [128, 128]}, "static"),
        ({"quant_method": "fp8"}, "weight_block_size"),
    ],
)
def test_unsupported_quantization_is_refused(tiny_checkpoint, quant, message) -> None:
    cfg = json.loads((tiny_checkpoint("qwen3-next-a") / "config.json").read_text())
    cfg["quantization_config"] = quant
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_hf(cfg)


def test_fp8_plain_row_flag_for_shards() -> None:
    from deltaserve.layers.fp8 import Fp8Config, _convert_linear
    from deltaserve.layers.linear import MergedColumnParallelLinear

    cfg = Fp8Config(block_n=128, block_k=128, modules_to_not_convert=())
    aligned = MergedColumnParallelLinear(256, {"a": 256, "b": 128}, dtype=torch.bfloat16)
    _convert_linear(aligned, cfg)
    assert aligned.fp8_rows_plain  # shard b starts at row 256 = scale row 2
    ragged = MergedColumnParallelLinear(256, {"a": 100, "b": 200}, dtype=torch.bfloat16)
    _convert_linear(ragged, cfg)
    assert not ragged.fp8_rows_plain  # shard b starts at row 100 but at scale row 1
    assert not torch.equal(ragged.weight_row_block, torch.arange(300) // 128)
