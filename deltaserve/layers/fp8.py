"""Block-FP8 checkpoints (`quantization_config.quant_method == "fp8"`, e4m3, 128×128 scales).

`apply_fp8(model, quant, rules)` turns every linear (and the routed experts) whose checkpoint module
is not in `modules_to_not_convert` into an FP8 weight plus a `<weight>_scale_inv` parameter, both
with weight loaders, so strict loading accounts for the scales like any other tensor. Each converted
module also keeps `weight_row_block [N]`: the scale row of every weight row (see ops/fp8/reference).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deltaserve.layers.linear import ReplicatedLinear
from deltaserve.layers.moe import FusedExperts
from deltaserve.layers.weights import WeightShapeError, check_shape, make_param
from deltaserve.ops.fp8 import FP8_DTYPE
from deltaserve.ops.fp8.reference import PLAIN_BN

CheckpointName = Callable[[str, Any], str]


@dataclass(frozen=True)
class Fp8Config:
    """Validated `quantization_config` of a block-FP8 checkpoint (built by `ModelConfig.from_hf`)."""

    block_n: int
    block_k: int
    modules_to_not_convert: tuple[str, ...]

    def skips(self, module: str) -> bool:
        return any(
            module == m or module.endswith("." + m) or module.startswith(m + ".")
            for m in self.modules_to_not_convert
        )


def apply_fp8(model: nn.Module, cfg: Fp8Config, checkpoint_name: CheckpointName) -> None:
    """Convert the quantised modules of `model` in place (before loading weights).

    `checkpoint_name(param_name, shard)` names the checkpoint tensor feeding a parameter shard; a
    module stays unquantised when every checkpoint module feeding it is in `modules_to_not_convert`.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, ReplicatedLinear) and not _skipped(
            cfg, checkpoint_name, name + ".weight", module.weight
        ):
            _convert_linear(module, cfg)
        elif isinstance(module, FusedExperts) and not _skipped(
            cfg, checkpoint_name, name + ".gate_up_proj", module.gate_up_proj
        ):
            _convert_experts(module, cfg)


def _skipped(cfg: Fp8Config, checkpoint_name: CheckpointName, param_name: str, param: nn.Parameter) -> bool:
    shards = param.shard_ids or (None,)
    modules = {checkpoint_name(param_name, s).rsplit(".", 1)[0] for s in shards}
    return all(cfg.skips(m) for m in modules)


def _convert_linear(module: ReplicatedLinear, cfg: Fp8Config) -> None:
    old = module.weight
    n, k = old.shape
    bn, kb = cfg.block_n, math.ceil(k / cfg.block_k)
    module.weight = make_param(
        (n, k), FP8_DTYPE, old.device, weight_loader=old.weight_loader, shard_ids=old.shard_ids
    )
    sizes = getattr(module, "shard_sizes", None) or {None: n}
    row_start, block_start = {}, {}
    r = b = 0
    for shard, size in sizes.items():
        row_start[shard], block_start[shard] = r, b
        r, b = r + size, b + math.ceil(size / bn)
    num_blocks = max(b, math.ceil(n / bn))  # shard-wise and whole-tensor layouts may differ
    module.register_buffer(
        "weight_row_block",
        torch.cat([block_start[s] + torch.arange(size) // bn for s, size in sizes.items()]).to(old.device),
        persistent=False,
    )
    # rows map to scale rows as n // 128: the GEMM then takes one scale per tile (row_block None)
    module.fp8_rows_plain = bn == PLAIN_BN and all(row_start[s] == block_start[s] * bn for s in sizes)
    weight_loader = old.weight_loader

    def load_scale(param: nn.Parameter, loaded: torch.Tensor, shard: Any = None) -> None:
        if shard is None:
            rows = math.ceil(n / bn)
            check_shape((rows, kb), loaded, "weight_scale_inv")
            param.data[:rows].copy_(loaded)
            # The weight may be permuted on load (Qwen3-Next de-interleave): follow its rows.
            src = torch.empty(n, 1, dtype=torch.float64)
            weight_loader(
                nn.Parameter(src, requires_grad=False), torch.arange(n, dtype=torch.float64)[:, None]
            )
            rows_of = src[:, 0].long() // bn
            module.weight_row_block.copy_(rows_of.to(module.weight_row_block.device))
            module.fp8_rows_plain = bn == PLAIN_BN and torch.equal(rows_of, torch.arange(n) // bn)
            return
        if shard not in sizes:
            raise WeightShapeError(f"unknown shard {shard!r}")
        rows = math.ceil(sizes[shard] / bn)
        target = param.data.narrow(0, block_start[shard], rows)
        check_shape(target.shape, loaded, f"weight_scale_inv shard {shard!r}")
        target.copy_(loaded)
        idx = slice(row_start[shard], row_start[shard] + sizes[shard])
        module.weight_row_block[idx] = block_start[shard] + torch.arange(sizes[shard]) // bn

    module.weight_scale_inv = make_param(
        (num_blocks, kb), torch.float32, old.device, weight_loader=load_scale, shard_ids=old.shard_ids
    )
    module.weight_scale_inv.data.fill_(float("nan"))  # an unloaded scale can never pass silently
    module.fp8_block_k = cfg.block_k


def _convert_experts(module: FusedExperts, cfg: Fp8Config) -> None:
    e, two_i, h = module.gate_up_proj.shape
    i = two_i // 2
    bn, bk = cfg.block_n, cfg.block_k
    gb = math.ceil(i / bn)
    dev = module.gate_up_proj.device

    def requant(old: nn.Parameter) -> nn.Parameter:
        return make_param(old.shape, FP8_DTYPE, dev, weight_loader=old.weight_loader, shard_ids=old.shard_ids)

    def scale_loader(rows_of: dict[str | None, tuple[int, int]]):
        def load(param: nn.Parameter, loaded: torch.Tensor, shard: Any = None) -> None:
            if shard is None:
                raise WeightShapeError("stacked (fused) FP8 experts are not an official layout")
            expert, name = shard if isinstance(shard, tuple) else (shard, None)
            start, rows = rows_of[name]
            target = param.data[expert].narrow(0, start, rows)
            check_shape(target.shape, loaded, f"expert {expert} weight_scale_inv")
            target.copy_(loaded)

        return load

    module.gate_up_proj = requant(module.gate_up_proj)
    module.down_proj = requant(module.down_proj)
    module.gate_up_proj_scale_inv = make_param(
        (e, 2 * gb, math.ceil(h / bk)),
        torch.float32,
        dev,
        weight_loader=scale_loader({"gate": (0, gb), "up": (gb, gb)}),
        shard_ids=module.gate_up_proj.shard_ids,
    )
    module.down_proj_scale_inv = make_param(
        (e, math.ceil(h / bn), math.ceil(i / bk)),
        torch.float32,
        dev,
        weight_loader=scale_loader({None: (0, math.ceil(h / bn))}),
        shard_ids=module.down_proj.shard_ids,
    )
    for p in (module.gate_up_proj_scale_inv, module.down_proj_scale_inv):
        p.data.fill_(float("nan"))
    gate_up_rows = torch.cat([torch.arange(i) // bn, gb + torch.arange(i) // bn])
    module.register_buffer("gate_up_row_block", gate_up_rows.to(dev), persistent=False)
    module.register_buffer("down_row_block", (torch.arange(h) // bn).to(dev), persistent=False)
    module.fp8_block_k = bk
