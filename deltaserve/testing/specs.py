"""Tiny model specifications for random test checkpoints.

A `TinySpec` describes one tiny checkpoint: the architecture (the `architectures[0]` string of an
official release), its dims, and how the files are laid out (expert layout, sharding, extra `mtp.*`
tensors, config style). `SPECS` holds the named presets the test suite uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

QWEN3_NEXT = "Qwen3NextForCausalLM"
QWEN3_5_DENSE = "Qwen3_5ForCausalLM"
QWEN3_5_MOE = "Qwen3_5MoeForCausalLM"
QWEN3_5_VL_DENSE = "Qwen3_5ForConditionalGeneration"
QWEN3_5_VL_MOE = "Qwen3_5MoeForConditionalGeneration"

ARCHITECTURES = (QWEN3_NEXT, QWEN3_5_DENSE, QWEN3_5_MOE, QWEN3_5_VL_DENSE, QWEN3_5_VL_MOE)
_MOE_ARCHS = (QWEN3_NEXT, QWEN3_5_MOE, QWEN3_5_VL_MOE)
_MULTIMODAL_ARCHS = (QWEN3_5_VL_DENSE, QWEN3_5_VL_MOE)
_MODEL_TYPES = {
    QWEN3_NEXT: "qwen3_next",
    QWEN3_5_DENSE: "qwen3_5_text",
    QWEN3_5_MOE: "qwen3_5_moe_text",
    QWEN3_5_VL_DENSE: "qwen3_5",
    QWEN3_5_VL_MOE: "qwen3_5_moe",
}
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class TinySpec:
    """One tiny random checkpoint.

    Dims follow the HF config names: attention `num_attention_heads` / `num_kv_heads` / `head_dim`;
    Gated DeltaNet `linear_num_key_heads` (Hk), `linear_num_value_heads` (Hv), `linear_key_head_dim`
    (Dk), `linear_value_head_dim` (Dv), `conv_kernel`; MoE `num_experts` / `num_experts_per_tok` /
    `moe_intermediate_size` / `shared_expert_intermediate_size` (0 for dense); dense MLP
    `intermediate_size`. Layer `i` is full attention when `(i + 1) % full_attention_interval == 0`.

    Layout switches:
      fused_experts: write MoE experts stacked (`mlp.experts.gate_up_proj` [E, 2I, H],
        `mlp.experts.down_proj` [E, H, I]) instead of transformers' default per-expert tensors.
      max_shard_bytes: shard size for `save_pretrained`; small values force several shards and an index.
      with_mtp: add `mtp.*` tensors (one MTP layer) to the last shard, as official releases carry.
      legacy_config: (Qwen3-Next only) write config.json the way the official release does with
        transformers 4.x: flat `rope_theta` / `partial_rotary_factor`, `torch_dtype`, no `layer_types`.
      quantize_fp8: write linear weights as float8_e4m3fn with 128x128 block `weight_scale_inv`.
      dtype: storage dtype of the (unquantised) weights, "float32" | "bfloat16" | "float16".
      embed_scale: factor on the init std (1/sqrt(H)) of the token embedding `embed_tokens`; values
        above 1 make the embedding a larger part of the residual stream.
      lm_head_spread: log-normal spread of the (untied) LM head's row norms: row v is scaled by
        exp(lm_head_spread * z_v), z_v ~ N(0, 1) seeded; 0 (default) keeps the rows alike. Larger
        values give more decisive logits (larger top-1/top-2 gaps), as trained models have.
      seed: default seed (`write_checkpoint(..., seed=None)` uses it).
    """

    architecture: str
    hidden_size: int = 64
    num_layers: int = 4
    num_attention_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    linear_num_key_heads: int = 2
    linear_num_value_heads: int = 4
    linear_key_head_dim: int = 32
    linear_value_head_dim: int = 32
    conv_kernel: int = 4
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    intermediate_size: int = 128
    vocab_size: int = 512
    tie_word_embeddings: bool = False
    full_attention_interval: int = 4
    partial_rotary_factor: float = 0.25
    rope_theta: float = 10_000_000.0
    mrope_section: tuple[int, ...] | None = None
    rms_norm_eps: float = 1e-6
    fused_experts: bool = False
    max_shard_bytes: int | None = None
    with_mtp: bool = True
    legacy_config: bool = False
    quantize_fp8: bool = False
    dtype: str = "float32"
    embed_scale: float = 1.0
    lm_head_spread: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture: {self.architecture!r} is not one of {ARCHITECTURES}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: {self.dtype!r} is not one of {DTYPES}")
        for name in (
            "hidden_size",
            "num_layers",
            "num_attention_heads",
            "num_kv_heads",
            "head_dim",
            "linear_num_key_heads",
            "linear_num_value_heads",
            "linear_key_head_dim",
            "linear_value_head_dim",
            "conv_kernel",
            "vocab_size",
            "full_attention_interval",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_kv_heads:
            raise ValueError("num_kv_heads: must divide num_attention_heads")
        if self.linear_num_value_heads % self.linear_num_key_heads:
            raise ValueError("linear_num_key_heads: must divide linear_num_value_heads")
        if self.full_attention_interval > self.num_layers:
            raise ValueError("full_attention_interval: larger than num_layers leaves no full-attention layer")
        rotary = int(self.head_dim * self.partial_rotary_factor)
        if rotary <= 0 or rotary % 2:
            raise ValueError(f"partial_rotary_factor: rotary dim {rotary} must be a positive even number")
        if self.is_moe:
            for name in (
                "num_experts",
                "num_experts_per_tok",
                "moe_intermediate_size",
                "shared_expert_intermediate_size",
            ):
                if getattr(self, name) <= 0:
                    raise ValueError(f"{name}: must be positive for MoE architecture {self.architecture}")
            if self.num_experts_per_tok > self.num_experts:
                raise ValueError("num_experts_per_tok: larger than num_experts")
        else:
            if self.num_experts:
                raise ValueError(f"num_experts: must be 0 for dense architecture {self.architecture}")
            if self.fused_experts:
                raise ValueError(f"fused_experts: {self.architecture} has no experts")
        if self.intermediate_size <= 0 and self.architecture in (QWEN3_5_DENSE, QWEN3_5_VL_DENSE):
            raise ValueError("intermediate_size: must be positive for a dense model")
        if self.mrope_section is not None:
            if not self.is_qwen3_5:
                raise ValueError("mrope_section: only Qwen3.5 uses mRoPE")
            if len(self.mrope_section) != 3 or sum(self.mrope_section) != rotary // 2:
                raise ValueError(f"mrope_section: must be 3 ints summing to rotary_dim/2 = {rotary // 2}")
        if self.legacy_config and self.architecture != QWEN3_NEXT:
            raise ValueError(
                "legacy_config: only the Qwen3-Next release uses the transformers-4 config style"
            )
        if self.quantize_fp8 and self.fused_experts:
            raise ValueError("quantize_fp8: FP8 with fused experts is not an official layout")
        if self.max_shard_bytes is not None and self.max_shard_bytes <= 0:
            raise ValueError("max_shard_bytes: must be positive or None")
        if not self.embed_scale > 0:
            raise ValueError(f"embed_scale: must be positive, got {self.embed_scale}")
        if not self.lm_head_spread >= 0:
            raise ValueError(f"lm_head_spread: must be >= 0, got {self.lm_head_spread}")
        if self.lm_head_spread and self.tie_word_embeddings:
            raise ValueError("lm_head_spread: needs an untied LM head (tie_word_embeddings=False)")

    @property
    def model_type(self) -> str:
        """`model_type` of the config.json root."""
        return _MODEL_TYPES[self.architecture]

    @property
    def is_moe(self) -> bool:
        return self.architecture in _MOE_ARCHS

    @property
    def is_multimodal(self) -> bool:
        """True for the `*ForConditionalGeneration` roots (text under `model.language_model.*`)."""
        return self.architecture in _MULTIMODAL_ARCHS

    @property
    def is_qwen3_5(self) -> bool:
        return self.architecture != QWEN3_NEXT

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def resolved_mrope_section(self) -> tuple[int, int, int]:
        """mRoPE (t, h, w) sections over the rotary_dim/2 frequencies (Qwen3.5 only)."""
        if self.mrope_section is not None:
            return tuple(self.mrope_section)  # type: ignore[return-value]
        half = self.rotary_dim // 2
        t = round(half * 11 / 32)  # the released [11, 11, 10] over 32 frequencies, scaled
        return (t, t, half - 2 * t)

    @property
    def layer_types(self) -> list[str]:
        k = self.full_attention_interval
        return ["full_attention" if (i + 1) % k == 0 else "linear_attention" for i in range(self.num_layers)]

    @property
    def text_prefix(self) -> str:
        """Checkpoint prefix of the decoder: `model.language_model.` or `model.`."""
        return "model.language_model." if self.is_multimodal else "model."

    def replace(self, **changes: object) -> TinySpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


_NEXT_A = TinySpec(
    architecture=QWEN3_NEXT,
    hidden_size=64,
    num_layers=4,
    num_attention_heads=4,
    num_kv_heads=2,
    head_dim=64,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=32,
    linear_value_head_dim=32,
    num_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=48,
    intermediate_size=96,
    vocab_size=512,
    rope_theta=10_000_000.0,
    legacy_config=True,
    dtype="float32",
)

_DENSE_A = TinySpec(
    architecture=QWEN3_5_DENSE,
    hidden_size=64,
    num_layers=4,
    num_attention_heads=4,
    num_kv_heads=2,
    head_dim=64,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=32,
    linear_value_head_dim=32,
    intermediate_size=128,
    vocab_size=512,
    tie_word_embeddings=True,
    rope_theta=10_000_000.0,
    dtype="float32",
)

_MOE_A = TinySpec(
    architecture=QWEN3_5_MOE,
    hidden_size=64,
    num_layers=4,
    num_attention_heads=4,
    num_kv_heads=2,
    head_dim=64,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=32,
    linear_value_head_dim=32,
    num_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=48,
    vocab_size=512,
    max_shard_bytes=300_000,
    dtype="float32",
)

SPECS: dict[str, TinySpec] = {
    # Qwen3-Next: interleaved in_proj_qkvz / in_proj_ba, per-expert MoE, config.json in the
    # transformers-4 style of the official release (flat rope_theta, no layer_types).
    "qwen3-next-a": _NEXT_A,
    # Hv/Hk = 3, Dk != Dv, head_dim 128, GQA 2:1, bf16 weights, several shards, transformers-5 config.
    "qwen3-next-b": TinySpec(
        architecture=QWEN3_NEXT,
        hidden_size=48,
        num_layers=4,
        num_attention_heads=2,
        num_kv_heads=1,
        head_dim=128,
        linear_num_key_heads=2,
        linear_num_value_heads=6,
        linear_key_head_dim=16,
        linear_value_head_dim=24,
        num_experts=6,
        num_experts_per_tok=3,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=40,
        intermediate_size=64,
        vocab_size=544,
        rope_theta=10_000.0,
        max_shard_bytes=120_000,
        dtype="bfloat16",
    ),
    # Qwen3.5 dense text-only: split in_proj_qkv / z / b / a, tied embeddings.
    "qwen3.5-dense-a": _DENSE_A,
    # Hv/Hk = 3, head_dim 128, 6 layers with full attention every 3rd (two KV layers), bf16, shards.
    "qwen3.5-dense-b": TinySpec(
        architecture=QWEN3_5_DENSE,
        hidden_size=48,
        num_layers=6,
        num_attention_heads=2,
        num_kv_heads=1,
        head_dim=128,
        linear_num_key_heads=1,
        linear_num_value_heads=3,
        linear_key_head_dim=32,
        linear_value_head_dim=32,
        intermediate_size=96,
        vocab_size=512,
        full_attention_interval=3,
        rope_theta=10_000.0,
        max_shard_bytes=100_000,
        dtype="bfloat16",
    ),
    # Qwen3.5 MoE text-only, per-expert tensors, fp32, several shards.
    "qwen3.5-moe-a": _MOE_A,
    # Qwen3.5 MoE with fused (stacked) experts, Hv/Hk = 3, head_dim 128, bf16, one file.
    "qwen3.5-moe-b": TinySpec(
        architecture=QWEN3_5_MOE,
        hidden_size=32,
        num_layers=4,
        num_attention_heads=2,
        num_kv_heads=1,
        head_dim=128,
        linear_num_key_heads=2,
        linear_num_value_heads=6,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        num_experts=6,
        num_experts_per_tok=3,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=32,
        vocab_size=512,
        rope_theta=10_000.0,
        fused_experts=True,
        dtype="bfloat16",
    ),
    # Multimodal roots: text under model.language_model.*, a tiny vision tower under model.visual.*.
    "qwen3.5-vl-dense": _DENSE_A.replace(
        architecture=QWEN3_5_VL_DENSE, tie_word_embeddings=False, max_shard_bytes=200_000, dtype="bfloat16"
    ),
    "qwen3.5-vl-moe": _MOE_A.replace(architecture=QWEN3_5_VL_MOE, dtype="bfloat16"),
    "qwen3.5-vl-moe-fused": _MOE_A.replace(
        architecture=QWEN3_5_VL_MOE, fused_experts=True, max_shard_bytes=None, dtype="float32"
    ),
    # FP8 block-quantised (e4m3, 128x128, weight_scale_inv), bf16 elsewhere, like the -FP8 releases.
    "qwen3-next-fp8": _NEXT_A.replace(quantize_fp8=True, dtype="bfloat16"),
    "qwen3.5-vl-moe-fp8": _MOE_A.replace(
        architecture=QWEN3_5_VL_MOE, quantize_fp8=True, max_shard_bytes=None, dtype="bfloat16"
    ),
}


def resolve_spec(spec_or_name: TinySpec | str) -> TinySpec:
    """The `TinySpec` for a preset name, or the spec itself."""
    if isinstance(spec_or_name, TinySpec):
        return spec_or_name
    if isinstance(spec_or_name, str) and spec_or_name in SPECS:
        return SPECS[spec_or_name]
    raise ValueError(f"spec_or_name: {spec_or_name!r} is neither a TinySpec nor one of {sorted(SPECS)}")
