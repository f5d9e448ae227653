"""Build each tiny checkpoint once per process."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from pathlib import Path

from deltaserve.testing.checkpoint import write_checkpoint
from deltaserve.testing.specs import TinySpec, resolve_spec

_lock = threading.Lock()
_built: dict[tuple[TinySpec, int], Path] = {}
_root: Path | None = None
_owned_root: Path | None = None


def set_cache_root(path: str | Path) -> None:
    """Build later checkpoints under `path` (e.g. a pytest session temp dir); earlier ones stay valid."""
    global _root
    with _lock:
        _root = Path(path)
        _root.mkdir(parents=True, exist_ok=True)


def _cache_root() -> Path:
    global _root, _owned_root
    if _root is None:
        _owned_root = Path(tempfile.mkdtemp(prefix="deltaserve-fixtures-"))
        _root = _owned_root
        atexit.register(shutil.rmtree, _owned_root, True)
    return _root


def _make_read_only(path: Path) -> None:
    for f in path.iterdir():
        os.chmod(f, 0o444)


def cached_checkpoint(spec_or_name: TinySpec | str, seed: int = 0) -> Path:
    """Path of the checkpoint for (spec, seed), written on first use in this process.

    The files are made read-only: copy them (`make_corrupted_copy`, `shutil.copytree`) to edit.
    """
    spec = resolve_spec(spec_or_name)
    key = (spec, seed)
    with _lock:
        if key not in _built:
            label = spec_or_name if isinstance(spec_or_name, str) else spec.architecture
            out = Path(tempfile.mkdtemp(prefix=f"{label}-s{seed}-", dir=_cache_root()))
            write_checkpoint(spec, out, seed=seed)
            _make_read_only(out)
            _built[key] = out
        return _built[key]
