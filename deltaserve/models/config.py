"""`ModelConfig`: the one frozen, typed record of a hybrid Gated-DeltaNet checkpoint's architecture.

This is the only module that reads raw Hugging Face config attributes. Everything downstream
(layers, models, engine, plugins) reads `ModelConfig` fields.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deltaserve.layers.fp8 import Fp8Config

LINEAR = "linear_attention"
FULL = "full_attention"

# model_type -> family. The multimodal roots carry the language model under `text_config`.
_TEXT_TYPES = {"qwen3_next": "qwen3_next", "qwen3_5_text": "qwen3_5", "qwen3_5_moe_text": "qwen3_5_moe"}
_MULTIMODAL_ROOTS = {"qwen3_5": "qwen3_5", "qwen3_5_moe": "qwen3_5_moe"}
SUPPORTED_MODEL_TYPES = tuple(_TEXT_TYPES) + tuple(_MULTIMODAL_ROOTS)


class ConfigError(ValueError):
    """A checkpoint config that deltaserve cannot serve; the message names the field."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Qwen3-Next / Qwen3.5 (dense or MoE) language model.

    Head counts are the full (unsharded) model's; tensor parallelism divides them later.
    """

    model_type: str  # the text model's type: qwen3_next | qwen3_5_text | qwen3_5_moe_text
    family: str  # qwen3_next | qwen3_5 | qwen3_5_moe
    architecture: str  # config.architectures[0] (or the family's default)
    multimodal: bool  # checkpoint root is Qwen3_5(Moe)ForConditionalGeneration
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    layer_types: tuple[str, ...]
    rms_norm_eps: float
    hidden_act: str
    tie_word_embeddings: bool
    max_position_embeddings: int
    # full (gated) attention
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    attention_bias: bool
    attn_output_gate: bool
    rope_theta: float
    partial_rotary_factor: float
    mrope_section: tuple[int, ...] | None  # Qwen3.5 interleaved mRoPE sections (t, h, w)
    mrope_interleaved: bool
    # Gated DeltaNet
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int
    mamba_ssm_dtype: str | None  # recurrent-state dtype requested by the checkpoint ("float32") or None
    # MLP / MoE
    intermediate_size: int | None
    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int | None
    shared_expert_intermediate_size: int | None
    norm_topk_prob: bool
    decoder_sparse_step: int
    mlp_only_layers: tuple[int, ...]
    # misc
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    image_token_id: int | None = None
    mtp_num_hidden_layers: int = 0
    quantization: Fp8Config | None = None

    # ---- derived -------------------------------------------------------------------------------
    @property
    def rotary_dim(self) -> int:
        """Number of leading head dims that get RoPE (partial rotary)."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def conv_dim(self) -> int:
        """Channels of the GDN causal conv: [q | k | v]."""
        return 2 * self.linear_num_key_heads * self.linear_key_head_dim + self.value_dim

    @property
    def key_dim(self) -> int:
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def value_dim(self) -> int:
        return self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def is_moe_layer(self, layer_idx: int) -> bool:
        """HF rule: MoE iff not in mlp_only_layers and (i+1) % decoder_sparse_step == 0."""
        return (
            self.is_moe
            and layer_idx not in self.mlp_only_layers
            and (layer_idx + 1) % self.decoder_sparse_step == 0
        )

    @property
    def linear_layers(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.layer_types) if t == LINEAR)

    @property
    def full_layers(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.layer_types) if t == FULL)

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, source: str | os.PathLike | Mapping[str, Any] | Any) -> ModelConfig:
        """Build from a checkpoint directory, a config.json path, a config dict, or an HF config object."""
        raw = _as_dict(source)
        root_type = raw.get("model_type")
        if root_type is None:
            raise ConfigError("config has no 'model_type'")
        architectures = raw.get("architectures") or []
        multimodal = root_type in _MULTIMODAL_ROOTS
        if multimodal:
            text = raw.get("text_config")
            if not isinstance(text, Mapping):
                raise ConfigError(f"model_type {root_type!r} needs a 'text_config' object")
            text = dict(text)
            text.setdefault("model_type", root_type + "_text")
            for key in ("tie_word_embeddings",):  # root-level keys that govern the text model
                if key in raw and key not in text:
                    text[key] = raw[key]
        elif root_type in _TEXT_TYPES:
            text = dict(raw)
        else:
            raise ConfigError(
                f"unsupported model_type {root_type!r}: deltaserve serves the hybrid Gated-DeltaNet "
                f"family only ({', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        text_type = text.get("model_type")
        if text_type not in _TEXT_TYPES:
            raise ConfigError(f"unsupported text_config.model_type {text_type!r}")
        family = _TEXT_TYPES[text_type]
        r = _Reader(text, "text_config" if multimodal else "config")

        num_layers = r.int("num_hidden_layers")
        layer_types = _layer_types(text, num_layers)
        rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
        rope_theta = rope.get("rope_theta", text.get("rope_theta"))
        if rope_theta is None:
            raise ConfigError("config is missing 'rope_theta' (top level or in 'rope_parameters')")
        partial = rope.get("partial_rotary_factor", text.get("partial_rotary_factor"))
        if partial is None:
            raise ConfigError("config is missing 'partial_rotary_factor'")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "mrope"):
            raise ConfigError(f"unsupported rope_type {rope_type!r} (only default/mrope)")
        mrope_section: tuple[int, ...] | None = None
        if family != "qwen3_next":
            mrope_section = tuple(rope.get("mrope_section", text.get("mrope_section", (11, 11, 10))))
        num_experts = int(text.get("num_experts", 0) or 0)
        is_moe = family in ("qwen3_next", "qwen3_5_moe") and num_experts > 0
        if family == "qwen3_5_moe" and not is_moe:
            raise ConfigError("qwen3_5_moe config has no 'num_experts'")
        eos = text.get("eos_token_id", raw.get("eos_token_id"))
        eos_ids = tuple(eos) if isinstance(eos, list | tuple) else (() if eos is None else (int(eos),))
        quant = _quantization(raw.get("quantization_config"))
        default_arch = {
            "qwen3_next": "Qwen3NextForCausalLM",
            "qwen3_5": "Qwen3_5ForConditionalGeneration" if multimodal else "Qwen3_5ForCausalLM",
            "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration" if multimodal else "Qwen3_5MoeForCausalLM",
        }[family]
        cfg = cls(
            model_type=text_type,
            family=family,
            architecture=architectures[0] if architectures else default_arch,
            multimodal=multimodal,
            vocab_size=r.int("vocab_size"),
            hidden_size=r.int("hidden_size"),
            num_hidden_layers=num_layers,
            layer_types=layer_types,
            rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
            hidden_act=str(text.get("hidden_act", "silu")),
            tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
            max_position_embeddings=int(text.get("max_position_embeddings", 262144)),
            num_attention_heads=r.int("num_attention_heads"),
            num_key_value_heads=r.int("num_key_value_heads"),
            head_dim=int(text.get("head_dim") or r.int("hidden_size") // r.int("num_attention_heads")),
            attention_bias=bool(text.get("attention_bias", False)),
            attn_output_gate=bool(text.get("attn_output_gate", True)),
            rope_theta=float(rope_theta),
            partial_rotary_factor=float(partial),
            mrope_section=mrope_section,
            mrope_interleaved=family != "qwen3_next",
            linear_num_key_heads=r.int("linear_num_key_heads"),
            linear_num_value_heads=r.int("linear_num_value_heads"),
            linear_key_head_dim=r.int("linear_key_head_dim"),
            linear_value_head_dim=r.int("linear_value_head_dim"),
            linear_conv_kernel_dim=r.int("linear_conv_kernel_dim"),
            mamba_ssm_dtype=text.get("mamba_ssm_dtype", raw.get("mamba_ssm_dtype")),
            intermediate_size=text.get("intermediate_size"),
            num_experts=num_experts if is_moe else 0,
            num_experts_per_tok=r.int("num_experts_per_tok") if is_moe else 0,
            moe_intermediate_size=r.int("moe_intermediate_size") if is_moe else None,
            shared_expert_intermediate_size=r.int("shared_expert_intermediate_size") if is_moe else None,
            # Qwen3.5-MoE's router always renormalises; Qwen3-Next reads norm_topk_prob.
            norm_topk_prob=bool(text.get("norm_topk_prob", True)) if family == "qwen3_next" else True,
            decoder_sparse_step=int(text.get("decoder_sparse_step", 1) or 1),
            mlp_only_layers=tuple(int(i) for i in text.get("mlp_only_layers", []) or []),
            bos_token_id=text.get("bos_token_id", raw.get("bos_token_id")),
            eos_token_id=eos_ids,
            image_token_id=raw.get("image_token_id"),
            mtp_num_hidden_layers=int(
                text.get("mtp_num_hidden_layers", raw.get("mtp_num_hidden_layers", 0)) or 0
            ),
            quantization=quant,
        )
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        if self.linear_num_value_heads % self.linear_num_key_heads:
            raise ConfigError(
                f"linear_num_value_heads ({self.linear_num_value_heads}) must be a multiple of "
                f"linear_num_key_heads ({self.linear_num_key_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
            raise ConfigError(
                f"partial_rotary_factor {self.partial_rotary_factor} gives an odd/oversized rotary dim"
            )
        for i, layer_idx in enumerate(self.mlp_only_layers):
            if not 0 <= layer_idx < self.num_hidden_layers:
                raise ConfigError(f"mlp_only_layers[{i}] = {layer_idx} is out of range")
        if not self.is_moe or any(not self.is_moe_layer(i) for i in range(self.num_hidden_layers)):
            if not self.intermediate_size:
                raise ConfigError("config is missing 'intermediate_size' (needed by the dense MLP layers)")
        if self.mamba_ssm_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ConfigError(f"unsupported mamba_ssm_dtype {self.mamba_ssm_dtype!r}")


def _quantization(quant: Any) -> Fp8Config | None:
    """Validate `quantization_config`; one clear error naming the unsupported field."""
    if quant is None:
        return None
    if not isinstance(quant, Mapping):
        raise ConfigError(f"quantization_config must be an object, got {quant!r}")
    method = quant.get("quant_method")
    if method != "fp8":
        raise ConfigError(f"unsupported quantization_config.quant_method {method!r} (supported: 'fp8')")
    fmt = quant.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise ConfigError(f"unsupported quantization_config.fmt {fmt!r} (supported: 'e4m3')")
    scheme = quant.get("activation_scheme", "dynamic")
    if scheme != "dynamic":
        raise ConfigError(
            f"unsupported quantization_config.activation_scheme {scheme!r} (supported: 'dynamic')"
        )
    block = quant.get("weight_block_size")
    if not (
        isinstance(block, list | tuple)
        and len(block) == 2
        and all(isinstance(b, int) and b > 0 for b in block)
    ):
        raise ConfigError(
            f"quantization_config.weight_block_size must be [n, k] positive ints, got {block!r}"
        )
    return Fp8Config(block[0], block[1], tuple(quant.get("modules_to_not_convert") or ()))


class _Reader:
    """Reads required fields, raising one clear error that names the missing one."""

    def __init__(self, d: Mapping[str, Any], where: str) -> None:
        self.d, self.where = d, where

    def int(self, key: str) -> int:
        value = self.d.get(key)
        if value is None:
            raise ConfigError(f"{self.where} is missing required field {key!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{self.where} field {key!r} must be an integer, got {value!r}") from None


def _layer_types(text: Mapping[str, Any], num_layers: int) -> tuple[str, ...]:
    types = text.get("layer_types")
    if types is None:
        interval = text.get("full_attention_interval")
        if interval is None:
            raise ConfigError("config has neither 'layer_types' nor 'full_attention_interval'")
        interval = int(interval)
        if interval <= 0:
            raise ConfigError(f"full_attention_interval must be positive, got {interval}")
        types = [FULL if (i + 1) % interval == 0 else LINEAR for i in range(num_layers)]
    types = tuple(types)
    if len(types) != num_layers:
        raise ConfigError(f"layer_types has {len(types)} entries but num_hidden_layers is {num_layers}")
    for i, t in enumerate(types):
        if t not in (LINEAR, FULL):
            raise ConfigError(f"layer_types[{i}] = {t!r} is not 'linear_attention' or 'full_attention'")
    return types


def _as_dict(source: Any) -> dict[str, Any]:
    if isinstance(source, Mapping):
        return dict(source)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"no config.json at {path}")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: invalid JSON ({exc})") from None
    to_dict = getattr(source, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    raise ConfigError(f"cannot read a model config from {type(source).__name__}")
