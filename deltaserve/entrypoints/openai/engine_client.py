"""What the HTTP layer needs from the engine (`deltaserve.engine.async_engine.AsyncEngine` provides it).

Keeping it a Protocol makes the dependency explicit and lets the tests run the server on a fake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from deltaserve.engine.outputs import RequestOutput
from deltaserve.engine.sampling_params import SamplingParams


@runtime_checkable
class EngineClient(Protocol):
    """An asynchronous engine.

    `generate` yields cumulative `RequestOutput`s (one per engine step that changed the request; the
    last has `finished=True`) and raises `ValueError` for a request it cannot take (e.g. a prompt
    longer than `max_model_len`). `abort` frees the request's cache at once. `stats()` has at least
    `num_running`, `num_waiting`, `kv_cache_usage` (0..1).
    """

    tokenizer: Any  # a Hugging Face (fast) tokenizer
    model_config: Any
    engine_config: Any  # has .max_model_len and .model

    def generate(
        self, prompt: str | list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]: ...

    async def abort(self, request_id: str) -> None: ...

    def stats(self) -> dict: ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


def max_model_len_of(engine: EngineClient) -> int:
    """The engine's context limit (prompt + generated tokens per sequence)."""
    for holder in (engine.engine_config, engine.model_config):
        value = getattr(holder, "max_model_len", None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError("engine: exposes no max_model_len")
