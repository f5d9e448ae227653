"""Fixtures for the server tests: the real Qwen tokenizer (demo files), the demo checkpoint, servers."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(demo_model_dir: Path) -> Path:
    """A folder with the real Qwen tokenizer + chat template and a sampling generation_config.json."""
    return demo_model_dir


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir))


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo checkpoint, created once per test session in a temporary cache."""
    from deltaserve.demo import ensure_demo_model

    return ensure_demo_model(tmp_path_factory.mktemp("deltaserve-cache"))


@pytest.fixture
def script(fake, qwen_tokenizer):
    """Sets the text the test module's `fake` engine generates next (the module defines `fake`)."""

    def set_text(text: str) -> None:
        fake.script = qwen_tokenizer.encode(text)

    yield set_text
    fake.script = None
