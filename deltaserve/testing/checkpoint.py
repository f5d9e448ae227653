"""Write tiny random checkpoints in the official release layout.

`write_checkpoint` builds the transformers model for a `TinySpec`, fills every parameter with seeded
values, saves it with `save_pretrained`, then edits the files the way the official releases differ from
what transformers writes: `mtp.*` tensors in the last shard, optionally stacked (fused) experts or FP8
blocks, `full_attention_interval` / `mamba_ssm_dtype` in config.json, a generation config and a
tokenizer. Nothing is downloaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from deltaserve.testing import shards
from deltaserve.testing.specs import QWEN3_5_MOE, QWEN3_5_VL_MOE, QWEN3_NEXT, TinySpec, resolve_spec
from deltaserve.testing.tokenizer import special_token_ids, write_tokenizer
from deltaserve.testing.weights import generator_for, init_parameters, kind_of_checkpoint_tensor, sample

# The tiny vision tower of the multimodal roots (real: depth 27, hidden 1152, patch 16).
VISION_DIMS = {
    "depth": 1,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "patch_size": 16,
    "temporal_patch_size": 2,
    "spatial_merge_size": 2,
    "in_channels": 3,
    "num_position_embeddings": 64,
    "hidden_act": "gelu_pytorch_tanh",
}
MAX_POSITION_EMBEDDINGS = 8192
_PER_EXPERT = re.compile(r"^(?P<prefix>.*\.mlp\.experts)\.(?P<e>\d+)\.(?P<proj>gate|up|down)_proj\.weight$")


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _text_config_kwargs(spec: TinySpec, ids: dict[str, int]) -> dict:
    rope: dict = {
        "rope_type": "default",
        "rope_theta": spec.rope_theta,
        "partial_rotary_factor": spec.partial_rotary_factor,
    }
    if spec.is_qwen3_5:
        rope["mrope_interleaved"] = True
        rope["mrope_section"] = list(spec.resolved_mrope_section)
    kw: dict = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "linear_num_key_heads": spec.linear_num_key_heads,
        "linear_num_value_heads": spec.linear_num_value_heads,
        "linear_key_head_dim": spec.linear_key_head_dim,
        "linear_value_head_dim": spec.linear_value_head_dim,
        "linear_conv_kernel_dim": spec.conv_kernel,
        "layer_types": spec.layer_types,
        "rope_parameters": rope,
        "rms_norm_eps": spec.rms_norm_eps,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "hidden_act": "silu",
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
    }
    if spec.architecture not in (QWEN3_5_MOE, QWEN3_5_VL_MOE):  # Qwen3.5-MoE has no dense MLP width
        kw["intermediate_size"] = spec.intermediate_size
    if spec.is_moe:
        kw.update(
            num_experts=spec.num_experts,
            num_experts_per_tok=spec.num_experts_per_tok,
            moe_intermediate_size=spec.moe_intermediate_size,
            shared_expert_intermediate_size=spec.shared_expert_intermediate_size,
        )
    if spec.architecture == QWEN3_NEXT:
        kw.update(norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[])
    return kw


def build_hf_config(spec: TinySpec):
    """The transformers config object for a spec (as `save_pretrained` will write it)."""
    import transformers

    ids = special_token_ids(spec.vocab_size)
    text = _text_config_kwargs(spec, ids)
    if not spec.is_multimodal:
        cls = {
            QWEN3_NEXT: transformers.Qwen3NextConfig,
            "Qwen3_5ForCausalLM": transformers.Qwen3_5TextConfig,
            QWEN3_5_MOE: transformers.Qwen3_5MoeTextConfig,
        }[spec.architecture]
        config = cls(**text)
    else:
        cls = transformers.Qwen3_5MoeConfig if spec.is_moe else transformers.Qwen3_5Config
        config = cls(
            text_config=text,
            vision_config={**VISION_DIMS, "out_hidden_size": spec.hidden_size},
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=spec.tie_word_embeddings,
        )
    config.architectures = [spec.architecture]
    return config


def build_hf_model(spec_or_name: TinySpec | str, *, seed: int | None = None) -> torch.nn.Module:
    """The seeded transformers model of a spec, in eval mode, weights in `spec.dtype` (in memory only)."""
    import transformers

    spec = resolve_spec(spec_or_name)
    seed = spec.seed if seed is None else seed
    model = getattr(transformers, spec.architecture)(build_hf_config(spec))
    init_parameters(model, seed, embed_scale=spec.embed_scale, lm_head_spread=spec.lm_head_spread)
    return model.to(torch_dtype(spec.dtype)).eval()


def _add_mtp(ckpt_dir: Path, spec: TinySpec, seed: int) -> None:
    """Add one MTP layer (`mtp.*`, shaped like the first full-attention layer) to the last shard."""
    index = shards.tensor_index(ckpt_dir)
    src = f"{spec.text_prefix}layers.{spec.full_attention_interval - 1}."
    h = spec.hidden_size
    specs: dict[str, tuple[int, ...]] = {
        "mtp.fc.weight": (h, 2 * h),
        "mtp.pre_fc_norm_embedding.weight": (h,),
        "mtp.pre_fc_norm_hidden.weight": (h,),
        "mtp.norm.weight": (h,),
    }
    for name, (shape, _, _) in index.items():
        if name.startswith(src):
            specs["mtp.layers.0." + name[len(src) :]] = shape
    dtype = torch_dtype(spec.dtype)
    extra = {
        name: sample(kind_of_checkpoint_tensor(name, len(shape)), shape, generator_for(seed, name)).to(dtype)
        for name, shape in sorted(specs.items())
    }
    last = shards.shard_files(ckpt_dir)[-1]
    shards.rewrite_checkpoint(ckpt_dir, lambda fname, t: {**t, **extra} if fname == last else t)


def fuse_experts(ckpt_dir: Path) -> None:
    """Rewrite per-expert MoE tensors as stacked `experts.gate_up_proj` [E, 2I, H] / `down_proj` [E, H, I].

    Each stacked tensor goes to the shard that held its expert 0 `gate_proj`.
    """
    index = shards.tensor_index(ckpt_dir)
    groups: dict[str, dict[str, dict[int, str]]] = {}
    for name in index:
        m = _PER_EXPERT.match(name)
        if m:
            groups.setdefault(m["prefix"], {}).setdefault(m["proj"], {})[int(m["e"])] = name
    if not groups:
        raise ValueError(f"ckpt_dir: {ckpt_dir} has no per-expert MoE tensors to fuse")
    per_expert = {name for g in groups.values() for p in g.values() for name in p.values()}
    loaded: dict[str, torch.Tensor] = {}
    for fname in sorted({index[n][2] for n in per_expert}):
        tensors = shards.load_shard(ckpt_dir / fname)
        loaded.update({k: v for k, v in tensors.items() if k in per_expert})
    home: dict[str, dict[str, torch.Tensor]] = {}
    for prefix, projs in groups.items():
        num = len(projs["gate"])

        def stack(proj: str, projs: dict[str, dict[int, str]] = projs, num: int = num) -> torch.Tensor:
            return torch.stack([loaded[projs[proj][e]] for e in range(num)])

        gate_up = torch.cat([stack("gate"), stack("up")], dim=1)  # [E, 2I, H], gate rows first
        down = stack("down")  # [E, H, I]
        target = index[projs["gate"][0]][2]
        home.setdefault(target, {})[f"{prefix}.gate_up_proj"] = gate_up
        home[target][f"{prefix}.down_proj"] = down

    def edit(fname: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        kept = {k: v for k, v in tensors.items() if k not in per_expert}
        return {**kept, **home.get(fname, {})}

    shards.rewrite_checkpoint(ckpt_dir, edit)


def _patch_config(ckpt_dir: Path, spec: TinySpec) -> None:
    path = ckpt_dir / "config.json"
    cfg = json.loads(path.read_text())
    text = cfg["text_config"] if spec.is_multimodal else cfg
    text["full_attention_interval"] = spec.full_attention_interval
    if spec.is_qwen3_5:
        text["mamba_ssm_dtype"] = "float32"
    if spec.with_mtp:
        text["mtp_num_hidden_layers"] = 1
        if spec.is_qwen3_5:
            text["mtp_use_dedicated_embeddings"] = False
    if spec.legacy_config:
        text.pop("layer_types")
        rope = text.pop("rope_parameters")
        text["rope_theta"] = rope["rope_theta"]
        text["partial_rotary_factor"] = rope["partial_rotary_factor"]
        text["rope_scaling"] = None
        cfg["torch_dtype"] = cfg.pop("dtype")
    if spec.quantize_fp8:
        from deltaserve.testing.fp8 import quantization_config

        cfg["quantization_config"] = quantization_config(ckpt_dir)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _write_generation_config(ckpt_dir: Path, spec: TinySpec) -> None:
    """Like the releases: sampling defaults on (greedy tests must ask for greedy explicitly)."""
    import transformers

    ids = special_token_ids(spec.vocab_size)
    gen = {
        "bos_token_id": ids["<|endoftext|>"],
        "do_sample": True,
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"],
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.8,
        "transformers_version": transformers.__version__,
    }
    (ckpt_dir / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")


def write_checkpoint(spec_or_name: TinySpec | str, out_dir: str | Path, *, seed: int | None = None) -> Path:
    """Write a tiny random checkpoint into `out_dir` (created; must be empty) and return its path.

    Files: config.json, generation_config.json, model.safetensors or model-0000N-of-0000M.safetensors +
    model.safetensors.index.json, tokenizer.json, tokenizer_config.json (Qwen chat template),
    vocab.json, merges.txt. `seed=None` uses `spec.seed`. Same spec and seed -> identical bytes.
    """
    spec = resolve_spec(spec_or_name)
    seed = spec.seed if seed is None else seed
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: must be a non-negative int, got {seed!r}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"out_dir: {out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)

    model = build_hf_model(spec, seed=seed)
    max_shard = spec.max_shard_bytes if spec.max_shard_bytes is not None else "50GB"
    model.save_pretrained(str(out), max_shard_size=max_shard)
    del model

    if spec.with_mtp:
        _add_mtp(out, spec, seed)
    if spec.fused_experts:
        fuse_experts(out)
    if spec.quantize_fp8:
        from deltaserve.testing.fp8 import quantize_checkpoint

        quantize_checkpoint(out)
    _patch_config(out, spec)
    _write_generation_config(out, spec)
    write_tokenizer(out, spec.vocab_size)
    return out
