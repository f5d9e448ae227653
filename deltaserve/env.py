"""Every `DELTASERVE_*` environment variable, typed, in one place.

Read a variable with `env.get("DELTASERVE_X")` (or the module attribute `env.DELTASERVE_X`); the
value is parsed on every read so tests can monkeypatch `os.environ`. Unknown names raise.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (1/0/true/false), got {raw!r}")


@dataclass(frozen=True)
class EnvVar:
    name: str
    parse: Callable[[str], Any]
    default: Any
    doc: str


_VARS: dict[str, EnvVar] = {
    v.name: v
    for v in (
        EnvVar(
            "DELTASERVE_CPU_CACHE_GIB",
            float,
            1.0,
            "cache budget (KV pages + GDN state slots) in GiB when the engine runs on the CPU",
        ),
        EnvVar("DELTASERVE_LOG_LEVEL", str, "INFO", "log level of the `deltaserve` loggers"),
        EnvVar(
            "DELTASERVE_CUDA_GRAPH_MAX_BS",
            int,
            256,
            "largest decode batch captured in a CUDA graph (further capped by max_num_seqs)",
        ),
        EnvVar(
            "DELTASERVE_GRAPH_MEMORY_RESERVE_MIB",
            int,
            512,
            "GPU memory kept out of the cache budget for CUDA-graph pools and allocator slack",
        ),
        EnvVar("DELTASERVE_DISABLE_PROGRESS_BAR", _bool, False, "hide the offline LLM.generate progress bar"),
        EnvVar(
            "DELTASERVE_DISABLE_VLLM_PLUGIN",
            _bool,
            False,
            "turn off the vllm.general_plugins entry point (vLLM then runs its own model classes)",
        ),
        EnvVar(
            "DELTASERVE_CACHE_DIR",
            str,
            "",
            "where the embedded demo model is built (default $XDG_CACHE_HOME/deltaserve or ~/.cache/deltaserve)",
        ),
        EnvVar(
            "DELTASERVE_PDL",
            _bool,
            True,
            "launch the decode chain's Triton kernels with programmatic dependent launch (sm_90+)",
        ),
        EnvVar(
            "DELTASERVE_BENCH_BW", float, 3.0e12, "benchmarks: copy bandwidth (bytes/s) behind the floors"
        ),
        EnvVar("DELTASERVE_BENCH_FLOPS", float, 750e12, "benchmarks: bf16 dense FLOP/s behind the floors"),
        EnvVar(
            "DELTASERVE_ENGINE_IDLE_TIMEOUT_S",
            float,
            1.0,
            "how long the async engine thread sleeps at most between checks when idle",
        ),
    )
}


def get(name: str) -> Any:
    """The typed value of `name` (its default when unset or empty); ValueError names a bad value."""
    try:
        var = _VARS[name]
    except KeyError:
        raise KeyError(f"unknown deltaserve environment variable {name!r}") from None
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return var.default
    try:
        return var.parse(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r}: {exc}") from None


def describe() -> list[EnvVar]:
    """All known variables (for `--help` texts and docs)."""
    return list(_VARS.values())


def __getattr__(name: str) -> Any:
    if name in _VARS:
        return get(name)
    raise AttributeError(name)
