"""Engine test helpers: build small CPU engines over the tiny checkpoints."""

from __future__ import annotations

import pytest

from deltaserve.config import EngineConfig
from deltaserve.engine.core import LLMEngine


def _make_engine(path, **overrides) -> LLMEngine:
    kwargs = dict(device="cpu", max_model_len=128, max_num_seqs=8, max_num_batched_tokens=48, seed=0)
    kwargs.update(overrides)
    return LLMEngine(EngineConfig.create(path, **kwargs))


@pytest.fixture(scope="session")
def make_engine():
    """`make_engine(path, **EngineConfig overrides) -> LLMEngine` on the CPU with small limits."""
    return _make_engine


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The tiny models are latency-bound; one intra-op thread avoids OpenMP spin contention on
    a shared 2-core machine (measured 10x faster steps under load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
