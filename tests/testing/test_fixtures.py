"""deltaserve.testing: tiny random checkpoints in the official release layout.

`tiny_checkpoint` is the session fixture of deltaserve.testing.pytest_plugin (enabled in tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deltaserve.ops.fp8.reference import dequant_block_fp8, quantize_block_fp8
from deltaserve.testing import (
    SPECS,
    TinySpec,
    build_hf_model,
    cached_checkpoint,
    load_hf_model,
    make_corrupted_copy,
    shard_files,
    special_token_ids,
    tensor_index,
    write_checkpoint,
)

_SHARD_NAME = re.compile(r"^model-(\d{5})-of-(\d{5})\.safetensors$")


def _file_hashes(path: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


def _load_with_info(path: Path, spec: TinySpec):
    import transformers

    cls = getattr(transformers, spec.architecture)
    return cls.from_pretrained(
        str(path), dtype=torch.float32, local_files_only=True, output_loading_info=True
    )


def _prompt(vocab: int, n: int = 24, seed: int = 5) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_preset_builds_loads_and_runs(tiny_checkpoint, name: str) -> None:
    spec = SPECS[name]
    path = tiny_checkpoint(name)
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (path / f).is_file(), f
    names = tensor_index(path)

    # official names: decoder prefix, GDN projection layout, mtp.* present
    p = spec.text_prefix
    allowed = (p, "lm_head.", "mtp.", "model.visual.")
    assert all(n.startswith(allowed) for n in names), [n for n in names if not n.startswith(allowed)]
    assert ("lm_head.weight" in names) != spec.tie_word_embeddings
    assert (f"{p}layers.0.linear_attn.in_proj_qkvz.weight" in names) == (not spec.is_qwen3_5)
    assert (f"{p}layers.0.linear_attn.in_proj_qkv.weight" in names) == spec.is_qwen3_5
    assert any(n.startswith("model.visual.") for n in names) == spec.is_multimodal
    assert {"mtp.fc.weight", "mtp.norm.weight", "mtp.layers.0.self_attn.q_proj.weight"} <= set(names)
    k = spec.full_attention_interval - 1
    assert f"{p}layers.{k}.self_attn.q_proj.weight" in names
    assert f"{p}layers.{k}.linear_attn.A_log" not in names

    cfg = json.loads((path / "config.json").read_text())
    text = cfg["text_config"] if spec.is_multimodal else cfg
    assert cfg["architectures"] == [spec.architecture] and cfg["model_type"] == spec.model_type
    assert text["full_attention_interval"] == spec.full_attention_interval
    assert text.get("mamba_ssm_dtype") == ("float32" if spec.is_qwen3_5 else None)
    assert ("layer_types" in text) != spec.legacy_config

    # transformers loads every parameter from the files (mtp.* ignored) ...
    if spec.quantize_fp8:
        hf = load_hf_model(path)
    else:
        hf, info = _load_with_info(path, spec)
        assert not any(info.values()), info
        # ... with exactly the values the seeded model had (fused/legacy/sharded rewrites are lossless)
        ref = build_hf_model(spec).float().state_dict()
        got = hf.state_dict()
        assert ref.keys() == got.keys()
        assert [n for n in ref if not torch.equal(ref[n], got[n])] == []
    c = hf.config.get_text_config()
    assert c.layer_types == spec.layer_types
    assert c.rope_parameters["rope_theta"] == spec.rope_theta
    assert c.rope_parameters["partial_rotary_factor"] == spec.partial_rotary_factor

    # a forward gives distinct, well separated logits (greedy decoding is not decided by ties)
    with torch.no_grad():
        logits = hf.eval()(_prompt(spec.vocab_size)).logits[0].float()  # [T, V]
    assert logits.shape == (24, spec.vocab_size) and torch.isfinite(logits).all()
    top2 = logits.topk(2, dim=-1).values  # [T, 2]
    gap = top2[:, 0] - top2[:, 1]  # [T]
    assert gap.median() > 1e-2 and (gap > 1e-4).all(), gap
    assert logits.argmax(-1).unique().numel() > 8


def test_parameter_scales_are_non_trivial() -> None:
    """HF's zero/one-initialised norms and A_log/dt_bias are replaced by seeded values of sensible scale."""
    sd = build_hf_model("qwen3-next-a").state_dict()
    norm = sd["model.layers.0.input_layernorm.weight"]  # zero-centred: applied as 1 + w
    assert 0.03 < norm.std() < 0.3 and norm.abs().mean() < 0.3
    gated = sd["model.layers.0.linear_attn.norm.weight"]  # plain gated RMSNorm weight, ~1
    assert (gated - 1).abs().mean() < 0.3 and gated.std() > 0.03
    a = sd["model.layers.0.linear_attn.A_log"].exp()
    assert ((a >= 1) & (a <= 16)).all() and a.std() > 0.5
    dt = sd["model.layers.0.linear_attn.dt_bias"]
    assert ((dt >= 0.5) & (dt <= 1.5)).all() and dt.std() > 0.05
    assert sd["model.layers.0.mlp.gate.weight"].std() > 0.05
    assert sd["model.layers.0.mlp.experts.gate_up_proj"].std() > 0.02


def test_embed_scale_and_lm_head_spread_change_only_their_tensors() -> None:
    from deltaserve.testing.weights import lm_head_row_scales

    spec = SPECS["qwen3.5-moe-a"]
    base = build_hf_model(spec).state_dict()
    tuned = build_hf_model(spec.replace(embed_scale=4.0, lm_head_spread=1.0)).state_dict()
    emb, head = "model.embed_tokens.weight", "lm_head.weight"
    torch.testing.assert_close(tuned[emb], 4.0 * base[emb])
    scales = lm_head_row_scales(spec.seed, spec.vocab_size, 1.0)  # [V, 1]
    torch.testing.assert_close(tuned[head], base[head] * scales)
    assert scales.std() > 0.5  # the row norms really spread
    assert all(torch.equal(base[k], tuned[k]) for k in base if k not in (emb, head))


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path) -> None:
    spec = SPECS["qwen3.5-moe-b"]  # fused rewrite + mtp injection + bf16
    a = write_checkpoint(spec, tmp_path / "a")
    b = write_checkpoint(spec, tmp_path / "b", seed=0)
    c = write_checkpoint(spec, tmp_path / "c", seed=1)
    ha, hb, hc = _file_hashes(a), _file_hashes(b), _file_hashes(c)
    assert ha == hb
    assert ha["model.safetensors"] != hc["model.safetensors"]
    assert ha["tokenizer.json"] == hc["tokenizer.json"] and ha["config.json"] == hc["config.json"]
    with pytest.raises(ValueError, match="out_dir"):
        write_checkpoint(spec, a)


def test_same_bytes_in_another_process(tmp_path: Path) -> None:
    """Seeds come from tensor names, not from process state (hash randomisation, RNG, threads)."""
    names = ["qwen3-next-b", "qwen3.5-vl-moe"]  # sharded + per-expert + multimodal + legacy-free
    code = (
        "import sys; from deltaserve.testing import write_checkpoint\n"
        "for n in sys.argv[2:]: write_checkpoint(n, sys.argv[1] + '/' + n, seed=3)\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path), *names], check=True, env=env)
    for n in names:
        assert _file_hashes(tmp_path / n) == _file_hashes(cached_checkpoint(n, seed=3)), n


def test_sharded_checkpoint_has_consistent_index(tiny_checkpoint) -> None:
    path = tiny_checkpoint("qwen3.5-moe-a")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    files = shard_files(path)
    assert len(files) > 2 and not (path / "model.safetensors").exists()
    m = [_SHARD_NAME.match(f) for f in files]
    assert all(m) and {int(x[2]) for x in m} == {len(files)}
    assert sorted(int(x[1]) for x in m) == list(range(1, len(files) + 1))
    names = tensor_index(path)
    assert index["weight_map"] == {n: f for n, (_, _, f) in names.items()}
    nbytes = {"F32": 4, "BF16": 2, "F16": 2}
    assert index["metadata"]["total_size"] == sum(math.prod(s) * nbytes[d] for s, d, _ in names.values())
    assert {f for n, (_, _, f) in names.items() if n.startswith("mtp.")} == {files[-1]}


def test_fused_experts_rewrite(tiny_checkpoint, tmp_path: Path) -> None:
    fused_spec = SPECS["qwen3.5-moe-b"]
    assert fused_spec.fused_experts
    fused = tiny_checkpoint(fused_spec)
    per_expert = tiny_checkpoint(fused_spec.replace(fused_experts=False))
    f_idx, p_idx = tensor_index(fused), tensor_index(per_expert)
    e, i, h = fused_spec.num_experts, fused_spec.moe_intermediate_size, fused_spec.hidden_size
    # this transformers version saves per-expert tensors by default; we write the stacked layout
    assert "model.layers.0.mlp.experts.0.gate_proj.weight" in p_idx
    assert not any(re.search(r"experts\.\d+\.", n) for n in f_idx)
    for prefix in ("model.layers.0.", "model.layers.3.", "mtp.layers.0."):
        assert f_idx[prefix + "mlp.experts.gate_up_proj"][0] == (e, 2 * i, h)
        assert f_idx[prefix + "mlp.experts.down_proj"][0] == (e, h, i)
    from safetensors import safe_open

    with safe_open(str(fused / "model.safetensors"), "pt") as f:
        gate_up = f.get_tensor("model.layers.1.mlp.experts.gate_up_proj")
        down = f.get_tensor("model.layers.1.mlp.experts.down_proj")
    with safe_open(str(per_expert / "model.safetensors"), "pt") as f:
        for x in range(e):
            pre = f"model.layers.1.mlp.experts.{x}."
            assert torch.equal(gate_up[x, :i], f.get_tensor(pre + "gate_proj.weight"))
            assert torch.equal(gate_up[x, i:], f.get_tensor(pre + "up_proj.weight"))
            assert torch.equal(down[x], f.get_tensor(pre + "down_proj.weight"))
    ids = _prompt(fused_spec.vocab_size)
    with torch.no_grad():
        assert torch.equal(load_hf_model(fused)(ids).logits, load_hf_model(per_expert)(ids).logits)


def test_multimodal_root_shares_text_weights_with_text_only_model(tiny_checkpoint) -> None:
    vl = tensor_index(tiny_checkpoint("qwen3.5-vl-dense"))
    spec = SPECS["qwen3.5-vl-dense"]
    text_only = build_hf_model(spec.replace(architecture="Qwen3_5ForCausalLM")).state_dict()
    hf_vl = build_hf_model(spec).state_dict()
    name = "model.layers.2.linear_attn.in_proj_qkv.weight"
    assert "model.language_model." + name[len("model.") :] in vl
    assert torch.equal(text_only[name], hf_vl["model.language_model.layers.2.linear_attn.in_proj_qkv.weight"])


def test_tokenizer_loads_with_autotokenizer(tiny_checkpoint) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    path = tiny_checkpoint("qwen3.5-dense-a")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    ids = special_token_ids(SPECS["qwen3.5-dense-a"].vocab_size)
    assert len(tok) <= SPECS["qwen3.5-dense-a"].vocab_size
    text = "The model reads 12345 tokens, naïve café!\n<|im_start|>user\nhi<|im_end|> <think>x</think>"
    enc = tok(text)["input_ids"]
    assert enc == raw.encode(text).ids
    assert tok.decode(enc) == text
    assert ids["<|im_start|>"] in enc and ids["<think>"] in enc
    assert len(tok("the model reads the prompt")["input_ids"]) < len("the model reads the prompt") / 2
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == ids["<|endoftext|>"]
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert chat == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    cfg = json.loads((path / "config.json").read_text())
    gen = json.loads((path / "generation_config.json").read_text())
    assert cfg["eos_token_id"] == ids["<|im_end|>"] and ids["<|endoftext|>"] in gen["eos_token_id"]


def test_corrupted_copies(tiny_checkpoint, tmp_path: Path) -> None:
    src = tiny_checkpoint("qwen3.5-moe-a")
    spec = SPECS["qwen3.5-moe-a"]
    names = tensor_index(src)
    victim = "model.layers.1.linear_attn.in_proj_z.weight"

    removed = make_corrupted_copy(src, tmp_path / "rm", remove=victim)
    idx = tensor_index(removed)
    assert victim not in idx and len(idx) == len(names) - 1
    index = json.loads((removed / "model.safetensors.index.json").read_text())
    assert victim not in index["weight_map"]
    _, info = _load_with_info(removed, spec)
    assert victim in info["missing_keys"]

    renamed = make_corrupted_copy(src, tmp_path / "mv", rename=(victim, victim + "_typo"))
    idx = tensor_index(renamed)
    assert victim not in idx and idx[victim + "_typo"][0] == names[victim][0]
    assert idx[victim + "_typo"][2] == names[victim][2]  # same shard

    reshaped = make_corrupted_copy(src, tmp_path / "rs", reshape=(victim, (7, 64)))
    assert tensor_index(reshaped)[victim][0] == (7, 64)
    assert {n: v for n, v in tensor_index(reshaped).items() if n != victim} == {
        n: v for n, v in names.items() if n != victim
    }
    assert tensor_index(src)[victim] == names[victim]  # the source is untouched

    with pytest.raises(ValueError, match="remove"):
        make_corrupted_copy(src, tmp_path / "x1", remove="no.such.tensor")
    with pytest.raises(ValueError, match="remove/rename/reshape"):
        make_corrupted_copy(src, tmp_path / "x2")
    with pytest.raises(ValueError, match="rename"):
        make_corrupted_copy(src, tmp_path / "x3", rename=(victim, "model.norm.weight"))


def test_fp8_checkpoint_layout(tiny_checkpoint) -> None:
    spec = SPECS["qwen3-next-fp8"]
    path = tiny_checkpoint("qwen3-next-fp8")
    names = tensor_index(path)
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "fp8" and qc["weight_block_size"] == [128, 128]
    assert qc["activation_scheme"] == "dynamic" and qc["fmt"] == "e4m3"
    for n in (
        "model.layers.0.linear_attn.in_proj_ba",
        "model.embed_tokens",
        "lm_head",
        "model.layers.0.mlp.gate",
    ):
        assert n in qc["modules_to_not_convert"]
    quantised = [n for n in names if n + "_scale_inv" in names]
    assert "model.layers.0.linear_attn.in_proj_qkvz.weight" in quantised
    assert "model.layers.3.self_attn.q_proj.weight" in quantised
    assert "mtp.layers.0.mlp.experts.0.up_proj.weight" in quantised
    for n in quantised:
        shape, dtype, _ = names[n]
        assert dtype == "F8_E4M3"
        assert names[n + "_scale_inv"][:2] == ((math.ceil(shape[0] / 128), math.ceil(shape[1] / 128)), "F32")
    for n in (
        "model.layers.0.linear_attn.in_proj_ba.weight",
        "model.layers.0.linear_attn.conv1d.weight",
        "model.layers.0.linear_attn.A_log",
        "model.layers.0.mlp.shared_expert_gate.weight",
        "model.embed_tokens.weight",
        "model.norm.weight",
        "mtp.fc.weight",
    ):
        assert names[n][1] == "BF16", n
    # dequantised weights stay close to the bf16 model the checkpoint was quantised from
    ref = build_hf_model(spec).float().state_dict()
    hf = load_hf_model(path).state_dict()
    w = "model.layers.3.self_attn.q_proj.weight"
    assert not torch.equal(hf[w], ref[w])
    assert (hf[w] - ref[w]).norm() / ref[w].norm() < 0.05
    assert torch.equal(
        hf["model.layers.0.linear_attn.in_proj_ba.weight"],
        ref["model.layers.0.linear_attn.in_proj_ba.weight"],
    )


def test_fp8_block_quantisation_round_trip() -> None:
    w = torch.randn(300, 200, generator=torch.Generator().manual_seed(0))
    w[:128, :128] *= 100.0  # one block with a much larger range must not hurt the others
    q, s = quantize_block_fp8(w)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (3, 2) and s.dtype == torch.float32
    back = dequant_block_fp8(q, s, None, 128)
    rel = ((back - w).abs() / w.abs().clamp_min(1e-3)).median()
    assert rel < 0.05
    assert (back[200:, 150:] - w[200:, 150:]).abs().max() < 0.25


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"architecture": "LlamaForCausalLM"}, "architecture"),
        ({"num_experts": 0}, "num_experts"),
        ({"linear_num_value_heads": 5}, "linear_num_key_heads"),
        ({"full_attention_interval": 9}, "full_attention_interval"),
        ({"dtype": "int8"}, "dtype"),
        ({"mrope_section": (1, 1, 1)}, "mrope_section"),
        ({"vocab_size": 100}, "vocab_size"),
        ({"embed_scale": 0.0}, "embed_scale"),
        ({"lm_head_spread": -1.0}, "lm_head_spread"),
        ({"lm_head_spread": 1.0, "tie_word_embeddings": True}, "lm_head_spread"),
    ],
)
def test_invalid_specs_name_the_field(tmp_path: Path, changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        spec = SPECS["qwen3.5-moe-a"].replace(**changes)
        write_checkpoint(spec, tmp_path / "x")


def test_unknown_preset_and_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="spec_or_name"):
        write_checkpoint("qwen9", tmp_path / "x")
    with pytest.raises(ValueError, match="ckpt_dir"):
        load_hf_model(tmp_path)
