"""Strict weight loading: every parameter filled exactly once, every checkpoint tensor accounted for."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deltaserve.layers.weights import WeightShapeError
from deltaserve.loader.names import NameRules
from deltaserve.loader.safetensors_io import CheckpointReader

logger = logging.getLogger(__name__)


class WeightLoadError(ValueError):
    """Missing, unexpected, duplicated or wrongly shaped tensor; the message names it (and its file)."""


@dataclass
class LoadReport:
    loaded_params: set[str] = field(default_factory=set)
    num_tensors: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # skip reason / prefix -> tensor count


def load_named_weights(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    rules: NameRules,
    *,
    file_of: Callable[[str], str] | None = None,
    source: str = "checkpoint",
) -> LoadReport:
    """Load `(checkpoint name, tensor)` pairs into `model` through `rules`, strictly.

    Raises `WeightLoadError` naming the tensor (and its file, when `file_of` is given) for an
    unexpected, duplicated or wrongly shaped tensor, and naming every missing one at the end.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    tied = _tied_names(model)
    covered: dict[str, set[Any]] = {}
    whole_kinds: set[str] = set()  # merged parameters this checkpoint stores as one tensor
    report = LoadReport()

    def where(name: str) -> str:
        return f"{name!r} (file {file_of(name)})" if file_of else repr(name)

    for ckpt_name, tensor in weights:
        report.num_tensors += 1
        skip = rules.skipped(ckpt_name)
        if skip is not None:
            report.skipped[skip] = report.skipped.get(skip, 0) + 1
            continue
        name = rules.rewrite(ckpt_name)
        param_name, shard = rules.map(name)
        if param_name in tied:
            report.skipped["tied " + param_name] = report.skipped.get("tied " + param_name, 0) + 1
            continue
        param = params.get(param_name)
        if param is None:
            raise WeightLoadError(
                f"unexpected checkpoint tensor {where(ckpt_name)}: no parameter {param_name!r} "
                f"in {type(model).__name__}"
            )
        shard_ids = param.shard_ids or (None,)
        keys = set(shard_ids) if shard is None else {shard}
        if shard is not None and shard not in shard_ids:
            raise WeightLoadError(
                f"checkpoint tensor {where(ckpt_name)}: parameter {param_name!r} has no shard {shard!r}"
            )
        done = covered.setdefault(param_name, set())
        if done & keys:
            raise WeightLoadError(
                f"checkpoint tensor {where(ckpt_name)} loads {param_name!r} {_shard_str(shard)}twice"
            )
        try:
            with torch.no_grad():
                param.weight_loader(param, tensor, shard)
        except WeightShapeError as exc:
            raise WeightLoadError(f"checkpoint tensor {where(ckpt_name)} -> {param_name!r}: {exc}") from None
        done |= keys
        report.loaded_params.add(param_name)
        if shard is None and param.shard_ids:
            whole_kinds.add(_kind(param_name))

    missing = []
    for param_name, param in params.items():
        if param_name in tied:
            continue
        want = set(param.shard_ids or (None,))
        absent = want - covered.get(param_name, set())
        if absent == want and _kind(param_name) in whole_kinds:
            absent = {None}  # name the one fused tensor, as the rest of the checkpoint stores it
        for shard in sorted(absent, key=repr):
            name = rules.checkpoint_name(param_name, shard)
            if name not in missing:  # a whole fused tensor covers several shards
                missing.append(name)
    if missing:
        shown = ", ".join(repr(m) for m in missing[:8]) + (
            f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        )
        raise WeightLoadError(f"{source} is missing {len(missing)} tensor(s): {shown}")
    if report.skipped:
        logger.info(
            "skipped %s checkpoint tensors", ", ".join(f"{n} {k}*" for k, n in report.skipped.items())
        )
    return report


def load_checkpoint(model: nn.Module, path: str | Path) -> LoadReport:
    """Stream a safetensors checkpoint directory into `model` (which defines `name_rules`)."""
    reader = CheckpointReader(path)
    return load_named_weights(
        model, reader, model.name_rules, file_of=reader.file_of, source=f"checkpoint {path}"
    )


def _kind(param_name: str) -> str:
    """Parameter name with layer indices wildcarded: `model.layers.*.mlp.experts.gate_up_proj`."""
    return re.sub(r"\.\d+\.", ".*.", param_name)


def _tied_names(model: nn.Module) -> set[str]:
    """Parameter names that alias an earlier parameter (e.g. a tied lm_head)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        else:
            seen[id(p)] = name
    return tied


def _shard_str(shard: Any) -> str:
    return "" if shard is None else f"shard {shard!r} "
