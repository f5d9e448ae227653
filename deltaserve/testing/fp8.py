"""FP8 (e4m3, 128x128 blocks) checkpoints like the official `-FP8` releases.

Quantised: every `*_proj.weight` of the decoder and MTP layers (attention q/k/v/o, GDN in_proj_qkvz /
in_proj_qkv / in_proj_z / out_proj, MLP and expert gate/up/down, shared expert), stored as
float8_e4m3fn with a float32 `<name>_scale_inv` of shape [ceil(N/128), ceil(K/128)] such that
`W ~= q * scale_inv` per block. Kept in the spec dtype: embeddings, LM head, norms, in_proj_ba /
in_proj_a / in_proj_b, conv1d, A_log, dt_bias, router `mlp.gate`, `shared_expert_gate`, `mtp.fc`,
and the vision tower.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from deltaserve.ops.fp8.reference import dequant_block_fp8, quantize_block_fp8
from deltaserve.testing import shards

BLOCK = 128
_QUANTISED_LEAVES = frozenset(
    {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "in_proj_qkvz",
        "in_proj_qkv",
        "in_proj_z",
        "out_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
)


def is_quantised_name(name: str) -> bool:
    """Whether a checkpoint tensor is stored in FP8 in the official layout."""
    if name.startswith("model.visual.") or not name.endswith(".weight"):
        return False
    return name[: -len(".weight")].rsplit(".", 1)[-1] in _QUANTISED_LEAVES


def quantize_checkpoint(ckpt_dir: Path) -> None:
    """Rewrite every quantisable weight of a checkpoint as FP8 + `weight_scale_inv` (same shard)."""
    if any(n.endswith(("experts.gate_up_proj", "experts.down_proj")) for n in shards.tensor_index(ckpt_dir)):
        raise ValueError("ckpt_dir: FP8 of stacked (fused) experts is not an official layout")

    def edit(fname: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, t in tensors.items():
            if is_quantised_name(name):
                q, s = quantize_block_fp8(t, BLOCK, BLOCK)
                out[name] = q
                out[name + "_scale_inv"] = s
            else:
                out[name] = t
        return out

    shards.rewrite_checkpoint(ckpt_dir, edit)


def quantization_config(ckpt_dir: Path) -> dict:
    """The config.json `quantization_config` of an FP8 checkpoint (lists every unconverted module)."""
    return quantization_config_for(shards.tensor_index(ckpt_dir))


def quantization_config_for(names: Iterable[str]) -> dict:
    """`quantization_config` for a checkpoint holding these tensor names (official FP8 layout; names of
    transformers' fused experts, which are always converted, may be among them)."""
    keep = sorted({n.rsplit(".", 1)[0] for n in names if n.endswith(".weight") and not is_quantised_name(n)})
    return {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "modules_to_not_convert": keep,
        "quant_method": "fp8",
        "weight_block_size": [BLOCK, BLOCK],
    }


def official_fp8_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """HF-model tensors as an official block-FP8 checkpoint stores them, quantised on their own device
    (real-width random models for benchmarks, without writing a checkpoint). transformers' fused
    experts (`experts.gate_up_proj [E, 2I, H]`, gate rows first; `experts.down_proj [E, H, I]`) come
    out per expert, as the official releases hold them."""
    for name, t in named:
        t = t.detach()
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            prefix, leaf = name.rsplit(".", 1)
            i = t.shape[1] // 2
            parts = (
                {"gate_proj": t[:, :i], "up_proj": t[:, i:]} if leaf == "gate_up_proj" else {"down_proj": t}
            )
            for part, w in parts.items():
                q, s = quantize_block_fp8(w, BLOCK, BLOCK)  # batched: [E, N, K], [E, NB, KB]
                for e in range(w.shape[0]):
                    yield f"{prefix}.{e}.{part}.weight", q[e]
                    yield f"{prefix}.{e}.{part}.weight_scale_inv", s[e]
        elif is_quantised_name(name):
            q, s = quantize_block_fp8(t, BLOCK, BLOCK)
            yield name, q
            yield name + "_scale_inv", s
        else:
            yield name, t


def dequantized_copy(src: Path, dst: Path) -> Path:
    """Copy an FP8 checkpoint with every FP8 weight dequantised to fp32 and no quantization_config."""
    src, dst = Path(src), Path(dst)
    for f in sorted(src.iterdir()):
        if f.is_file():
            shutil.copyfile(f, dst / f.name)
            (dst / f.name).chmod(0o644)

    def edit(fname: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, t in tensors.items():
            if name.endswith("_scale_inv"):
                continue
            scale = tensors.get(name + "_scale_inv")
            if scale is not None:
                t = dequant_block_fp8(t, scale, torch.arange(t.shape[0]) // BLOCK, BLOCK)  # fp32 [N, K]
            out[name] = t
        return out

    shards.rewrite_checkpoint(dst, edit)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.pop("quantization_config", None)
    (dst / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return dst


def is_fp8_checkpoint(ckpt_dir: Path) -> bool:
    cfg = json.loads((Path(ckpt_dir) / "config.json").read_text())
    return (cfg.get("quantization_config") or {}).get("quant_method") == "fp8"


def make_temp_dequantized(src: Path) -> Path:
    """`dequantized_copy` into a fresh temp dir (caller removes it)."""
    return dequantized_copy(src, Path(tempfile.mkdtemp(prefix="deltaserve-fp8-deq-")))
