"""Checkpoint-name -> (parameter name, shard id) mapping, invertible for error messages.

A rule's patterns use placeholders: `{p}` (any dotted prefix), `{e}` (an expert index) and `{w}`
(`weight` or `bias`). A name no rule matches maps to the parameter of the same name, whole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SCALE_SUFFIX = "_scale_inv"
_PLACEHOLDERS = {"p": r"(?P<p>.+?)", "e": r"(?P<e>\d+)", "w": r"(?P<w>weight|bias)"}


def _compile(pattern: str) -> re.Pattern[str]:
    out, pos = [], 0
    for m in re.finditer(r"\{(\w)\}", pattern):
        out.append(re.escape(pattern[pos : m.start()]))
        out.append(_PLACEHOLDERS[m.group(1)])
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("^" + "".join(out) + "$")


def _fill_shard(shard: Any, groups: dict[str, str]) -> Any:
    if isinstance(shard, tuple):
        return tuple(_fill_shard(s, groups) for s in shard)
    if shard == "{e}":
        return int(groups["e"])
    return shard


@dataclass(frozen=True)
class NameRule:
    """`ckpt` pattern -> `param` pattern, loading shard `shard` (which may contain "{e}")."""

    ckpt: str
    param: str
    shard: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ckpt_re", _compile(self.ckpt))
        object.__setattr__(self, "_param_re", _compile(self.param))

    def forward(self, name: str) -> tuple[str, Any] | None:
        m = self._ckpt_re.match(name)  # type: ignore[attr-defined]
        if m is None:
            return None
        groups = m.groupdict()
        return self.param.format(**groups), _fill_shard(self.shard, groups)

    def inverse(self, param_name: str, shard: Any) -> str | None:
        m = self._param_re.match(param_name)  # type: ignore[attr-defined]
        if m is None or (shard is None) != (self.shard is None):
            return None
        groups = dict(m.groupdict())
        if "{e}" in str(self.shard):
            expert = shard[0] if isinstance(shard, tuple) else shard
            groups["e"] = str(expert)
        if _fill_shard(self.shard, {**groups, "e": groups.get("e", "0")}) != shard:
            return None
        return self.ckpt.format(**groups)


@dataclass(frozen=True)
class NameRules:
    """A model's full mapping: prefix rewrites, skipped prefixes, then rules (first match wins)."""

    rules: Sequence[NameRule] = ()
    prefix_rewrites: Sequence[tuple[str, str]] = ()  # (checkpoint prefix, parameter prefix)
    skip_prefixes: Sequence[str] = ()

    def rewrite(self, name: str) -> str:
        for src, dst in self.prefix_rewrites:
            if name.startswith(src):
                return dst + name[len(src) :]
        return name

    def skipped(self, name: str) -> str | None:
        """The skip prefix a checkpoint name falls under, or None."""
        for prefix in self.skip_prefixes:
            if name.startswith(prefix):
                return prefix
        return None

    def map(self, name: str) -> tuple[str, Any]:
        """Checkpoint name (after prefix rewrite) -> (parameter name, shard id or None).

        `<weight>_scale_inv` (FP8 block scales) maps like its weight, to `<param>_scale_inv`.
        """
        if name.endswith(SCALE_SUFFIX):
            param, shard = self.map(name[: -len(SCALE_SUFFIX)])
            return param + SCALE_SUFFIX, shard
        for rule in self.rules:
            hit = rule.forward(name)
            if hit is not None:
                return hit
        return name, None

    def checkpoint_name(self, param_name: str, shard: Any, *, prefer_prefix: str | None = None) -> str:
        """Best guess of the checkpoint tensor that would fill `param_name` shard `shard`."""
        if param_name.endswith(SCALE_SUFFIX):
            base = self.checkpoint_name(param_name[: -len(SCALE_SUFFIX)], shard, prefer_prefix=prefer_prefix)
            return base + SCALE_SUFFIX
        name = param_name
        for rule in self.rules:
            guess = rule.inverse(param_name, shard)
            if guess is not None:
                name = guess
                break
        for src, dst in self.prefix_rewrites:
            if prefer_prefix is not None and src != prefer_prefix:
                continue
            if name.startswith(dst):
                return src + name[len(dst) :]
        return name


# Rules common to every model in the family (HF module names -> our fused parameters).
COMMON_RULES: tuple[NameRule, ...] = (
    NameRule("{p}.self_attn.q_proj.{w}", "{p}.self_attn.qkv_proj.{w}", "q"),
    NameRule("{p}.self_attn.k_proj.{w}", "{p}.self_attn.qkv_proj.{w}", "k"),
    NameRule("{p}.self_attn.v_proj.{w}", "{p}.self_attn.qkv_proj.{w}", "v"),
    NameRule("{p}.experts.{e}.gate_proj.weight", "{p}.experts.gate_up_proj", ("{e}", "gate")),
    NameRule("{p}.experts.{e}.up_proj.weight", "{p}.experts.gate_up_proj", ("{e}", "up")),
    NameRule("{p}.experts.{e}.down_proj.weight", "{p}.experts.down_proj", "{e}"),
    NameRule("{p}.gate_proj.weight", "{p}.gate_up_proj.weight", "gate"),
    NameRule("{p}.up_proj.weight", "{p}.gate_up_proj.weight", "up"),
)

# Qwen3.5 stores the GDN projections split; we hold them fused like Qwen3-Next.
SPLIT_GDN_RULES: tuple[NameRule, ...] = (
    NameRule("{p}.linear_attn.in_proj_qkv.weight", "{p}.linear_attn.in_proj_qkvz.weight", "qkv"),
    NameRule("{p}.linear_attn.in_proj_z.weight", "{p}.linear_attn.in_proj_qkvz.weight", "z"),
    NameRule("{p}.linear_attn.in_proj_b.weight", "{p}.linear_attn.in_proj_ba.weight", "b"),
    NameRule("{p}.linear_attn.in_proj_a.weight", "{p}.linear_attn.in_proj_ba.weight", "a"),
)
