"""`deltaserve doctor sglang`: which class SGLang resolves for each served architecture.

Runs SGLang's own registry with `SGLANG_EXTERNAL_MODEL_PACKAGE` pointing at our package, imports
that package strictly (SGLang itself only logs import errors and silently falls back to its
built-in classes), and reports, per architecture, the class SGLang would build.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

from deltaserve.models.registry import SUPPORTED_ARCHITECTURES

PACKAGE = "deltaserve.plugin.sglang.models"
ENV = "SGLANG_EXTERNAL_MODEL_PACKAGE"
# What the plugin needs from SGLang at run time (imported lazily there, eagerly here).
RUNTIME_MODULES = (
    "sglang.srt.layers.logits_processor",
    "sglang.srt.distributed.parallel_state",
    "sglang.srt.model_executor.forward_batch_info",
    "sglang.srt.mem_cache.memory_pool",
)


@dataclass(frozen=True)
class Resolution:
    architecture: str
    resolved: str  # "module.Class" SGLang returns, or the error text
    ours: bool


def resolve_all(package: str = PACKAGE) -> list[Resolution]:
    """Resolve every supported architecture through SGLang's registry (strict import of `package`).

    The environment variable must name `package` before `sglang.srt.models.registry` is first
    imported (SGLang reads it at import); a mismatch raises `RuntimeError` naming both values.
    """
    current = os.environ.setdefault(ENV, package)
    if current != package:
        raise RuntimeError(f"{ENV}={current!r}, expected {package!r}")
    from sglang.srt.models.registry import ModelRegistry, import_model_classes

    import_model_classes(package, strict=True)  # raises on any import error in our modules
    for name in RUNTIME_MODULES:
        importlib.import_module(name)
    out = []
    for arch in SUPPORTED_ARCHITECTURES:
        try:
            cls, _ = ModelRegistry.resolve_model_cls([arch])
            where = f"{cls.__module__}.{cls.__qualname__}"
            out.append(Resolution(arch, where, cls.__module__.startswith(package + ".")))
        except Exception as exc:  # reported, never swallowed: main() exits non-zero
            out.append(Resolution(arch, f"error: {type(exc).__name__}: {exc}", False))
    return out


def main(argv: list[str] | None = None) -> int:
    """Print SGLang's version, the SSM layout we will use and the class per architecture.

    Returns 0 when every architecture resolves to deltaserve's class, 1 otherwise.
    """
    from deltaserve.plugin.sglang.version import detect_ssm_layout, installed_version

    try:
        version = installed_version()
        layout = detect_ssm_layout()
        rows = resolve_all()
    except Exception as exc:
        print(f"sglang plugin: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"sglang {version}; SSM state layout {layout!r}; {ENV}={os.environ[ENV]}")
    width = max(len(r.architecture) for r in rows)
    for r in rows:
        print(f"  {'ok ' if r.ours else 'BAD'} {r.architecture:<{width}}  -> {r.resolved}")
    return 0 if all(r.ours for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
