"""SGLang plugin tests. Those needing a real SGLang use the `sglang_runtime` fixture: skipped when
sglang is not installed, a failure instead under `--require-sglang` (scripts/ci-sglang)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # sglang_harness.py

import sglang_harness  # noqa: E402

if importlib.util.find_spec("sglang") is not None:
    sglang_harness.set_sglang_env()  # before anything imports sglang's registry


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-sglang", action="store_true", help="fail (not skip) when sglang is not importable"
    )


@pytest.fixture(scope="session")
def sglang_runtime(request: pytest.FixtureRequest):
    """The imported `sglang` module (SGLang's environment variables set before its import)."""
    if importlib.util.find_spec("sglang") is None:
        if request.config.getoption("--require-sglang", default=False):
            pytest.fail("sglang is not installed but --require-sglang was given")
        pytest.skip("sglang is not installed (run scripts/ci-sglang)")
    import sglang

    return sglang
