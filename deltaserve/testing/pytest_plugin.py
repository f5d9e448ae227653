"""pytest fixtures for tiny checkpoints.

Enable in tests/conftest.py with `pytest_plugins = ["deltaserve.testing.pytest_plugin"]`, then:

    def test_x(tiny_checkpoint):
        path = tiny_checkpoint("qwen3-next-a")          # built once per session
        path2 = tiny_checkpoint("qwen3.5-moe-b", seed=3)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from deltaserve.testing.cache import cached_checkpoint, set_cache_root
from deltaserve.testing.specs import TinySpec


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Session-scoped factory `(spec_or_name, seed=0) -> Path` of read-only tiny checkpoints."""
    set_cache_root(tmp_path_factory.mktemp("deltaserve-checkpoints"))

    def build(spec_or_name: TinySpec | str, seed: int = 0) -> Path:
        return cached_checkpoint(spec_or_name, seed)

    return build
