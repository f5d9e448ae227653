"""Seeded random values for every parameter of a tiny model.

Each tensor draws from its own generator, seeded from (seed, canonical name), so a tensor's values do
not depend on which other tensors exist, and the text weights of a `*ForConditionalGeneration` root
(`model.language_model.X`) equal those of the text-only model (`model.X`) with the same dims.

Scales are chosen so the HF reference gives well separated logits (std ~1 over the vocab):
zero-centred RMSNorm weights ~ N(0, 0.1) (applied as 1 + w), gated/LayerNorm weights ~ 1 + N(0, 0.1),
A_log = log U(1, 16), dt_bias ~ U(0.5, 1.5), embeddings / LM head / router ~ N(0, 1/sqrt(H)),
other weights ~ N(0, 1/sqrt(fan_in)) (unit-variance outputs: layer outputs outweigh the embedding, so
tied-embedding models do not just repeat their input token), biases ~ N(0, 0.02).
`init_parameters` can scale the token embedding and spread the LM head's row norms (`TinySpec`
`embed_scale` / `lm_head_spread`); the defaults leave every value as above.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

# kinds of tensors, each with its own distribution
_ZERO_CENTRED_NORM = "zero_centred_norm"
_UNIT_NORM = "unit_norm"
_A_LOG = "a_log"
_DT_BIAS = "dt_bias"
_BIAS = "bias"
_EMBEDDING = "embedding"
_ROUTER = "router"
_EXPERTS = "experts"
_WEIGHT = "weight"


def canonical_name(name: str) -> str:
    """Seed key of a tensor: the multimodal text prefix is folded onto the text-only one."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    return name


def generator_for(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded from (seed, canonical name), stable across processes."""
    digest = hashlib.sha256(f"{seed}/{canonical_name(name)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def sample(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """fp32 values of one tensor of the given kind."""

    def normal(std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float32)

    if kind == _ZERO_CENTRED_NORM:
        return normal(0.1)
    if kind == _UNIT_NORM:
        return 1.0 + normal(0.1)
    if kind == _A_LOG:
        return torch.log(uniform(1.0, 16.0))
    if kind == _DT_BIAS:
        return uniform(0.5, 1.5)
    if kind == _BIAS:
        return normal(0.02)
    if kind in (_EMBEDDING, _ROUTER):
        return normal(1.0 / math.sqrt(shape[-1]))
    if kind == _EXPERTS:  # [E, out, in]
        return normal(1.0 / math.sqrt(shape[-1]))
    if kind == _WEIGHT:
        fan_in = math.prod(shape[1:])
        return normal(1.0 / math.sqrt(fan_in))
    raise ValueError(f"kind: unknown tensor kind {kind!r}")


def _kind_of_parameter(name: str, module: nn.Module, pname: str, ndim: int) -> str:
    cls = type(module).__name__
    if pname == "A_log":
        return _A_LOG
    if pname == "dt_bias":
        return _DT_BIAS
    if cls.endswith("RMSNormGated"):
        return _UNIT_NORM
    if cls.endswith("RMSNorm"):
        return _ZERO_CENTRED_NORM  # x_hat * (1 + w)
    if isinstance(module, nn.LayerNorm):
        return _UNIT_NORM if pname == "weight" else _BIAS
    if pname == "bias":
        return _BIAS
    if isinstance(module, nn.Embedding) or name == "lm_head.weight":
        return _EMBEDDING
    if cls.endswith("Router"):
        return _ROUTER
    if cls.endswith("Experts"):
        return _EXPERTS
    if ndim >= 2:
        return _WEIGHT
    raise ValueError(f"no init rule for parameter {name} of {cls}")


def kind_of_checkpoint_tensor(name: str, ndim: int) -> str:
    """Kind of a checkpoint tensor from its name alone (used for the extra `mtp.*` tensors)."""
    if name.endswith("linear_attn.norm.weight"):
        return _UNIT_NORM
    if name.endswith("norm.weight") or ".pre_fc_norm_" in name:  # layernorms, q/k norms, mtp norms
        return _ZERO_CENTRED_NORM
    if name.endswith(".A_log"):
        return _A_LOG
    if name.endswith(".dt_bias"):
        return _DT_BIAS
    if name.endswith("mlp.gate.weight"):
        return _ROUTER
    if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
        return _EXPERTS
    if name.endswith("embed_tokens.weight"):
        return _EMBEDDING
    if ndim >= 2:
        return _WEIGHT
    raise ValueError(f"no init rule for checkpoint tensor {name}")


def lm_head_row_scales(seed: int, vocab_size: int, spread: float) -> torch.Tensor:
    """[V, 1] log-normal factors exp(spread * z_v) for the LM head rows, seeded apart from the weights."""
    z = torch.randn((vocab_size, 1), generator=generator_for(seed, "lm_head.weight/row_scale"))
    return torch.exp(spread * z)  # [V, 1]


@torch.no_grad()
def init_parameters(
    model: nn.Module, seed: int, *, embed_scale: float = 1.0, lm_head_spread: float = 0.0
) -> None:
    """Overwrite every parameter of `model` with seeded values (tied parameters once, first name wins).

    `embed_scale` multiplies the token embedding (`*embed_tokens.weight`); with `lm_head_spread > 0`
    row v of `lm_head.weight` [V, H] is multiplied by exp(lm_head_spread * z_v), z_v ~ N(0, 1).
    """
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{mod_name}.{pname}" if mod_name else pname
            kind = _kind_of_parameter(name, module, pname, param.ndim)
            values = sample(kind, tuple(param.shape), generator_for(seed, name))
            if name.endswith("embed_tokens.weight") and embed_scale != 1.0:
                values = values * embed_scale
            if name == "lm_head.weight" and lm_head_spread:
                values = values * lm_head_row_scales(seed, values.shape[0], lm_head_spread)
            param.copy_(values.to(param.dtype))
