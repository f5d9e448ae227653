"""The dependency direction of DESIGN.md §3, checked on the source (no imports executed)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "deltaserve"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(*parts: str) -> list[Path]:
    out = []
    for part in parts:
        p = PKG / part
        out.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    return out


FORBIDDEN = {
    # module group -> import prefixes it must never use
    ("models", "layers", "ops", "context.py", "backends", "loader"): (
        "sglang",
        "vllm",
        "deltaserve.engine",
        "deltaserve.entrypoints",
        "deltaserve.plugin",
    ),
    ("ops",): ("deltaserve.layers", "deltaserve.models", "deltaserve.backends", "deltaserve.loader"),
    ("layers",): ("deltaserve.models", "deltaserve.backends"),
    ("plugin",): ("deltaserve.engine", "deltaserve.entrypoints"),
}


@pytest.mark.parametrize("group", list(FORBIDDEN), ids=lambda g: "+".join(g))
def test_dependency_direction(group: tuple[str, ...]) -> None:
    banned = FORBIDDEN[group]
    offenders = []
    for path in _files(*group):
        for name in _imports(path):
            if any(name == b or name.startswith(b + ".") for b in banned):
                offenders.append(f"{path.relative_to(PKG.parent)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_context_imports_only_torch() -> None:
    allowed = {"__future__", "dataclasses", "typing", "torch"}
    extra = {n for n in _imports(PKG / "context.py") if n.split(".")[0] not in allowed}
    assert not extra, extra
