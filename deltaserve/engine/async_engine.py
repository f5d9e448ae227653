"""`AsyncEngine`: the core loop on a background thread, driven from asyncio.

The engine thread owns the `LLMEngine`; the event loop only tokenizes/validates (in the caller) and
exchanges messages: new requests and aborts go into an inbox (the thread wakes on an event and
sleeps without spinning when idle); outputs come back through `loop.call_soon_threadsafe` into
one `asyncio.Queue` per request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from deltaserve import env
from deltaserve.config import EngineConfig
from deltaserve.engine.core import LLMEngine, PromptType
from deltaserve.engine.outputs import RequestOutput
from deltaserve.engine.request import Request
from deltaserve.engine.sampling_params import SamplingParams

logger = logging.getLogger("deltaserve.engine")

_DONE = object()


class EngineDeadError(RuntimeError):
    """The engine thread stopped on an error; every pending request fails with it."""


class AsyncEngine:
    def __init__(self, config: EngineConfig, *, engine: LLMEngine | None = None) -> None:
        self.engine_config = config
        self.engine = engine if engine is not None else LLMEngine(config)
        self.tokenizer = self.engine.tokenizer
        self.model_config = self.engine.model_config
        self._inbox: deque[tuple[str, Any]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._lock = threading.Lock()
        self._stats: dict = self.engine.stats()
        self._error: BaseException | None = None

    @classmethod
    def from_config(cls, config: EngineConfig | None = None, **kwargs: Any) -> AsyncEngine:
        """From an `EngineConfig`, or from `EngineConfig.create` keyword arguments (`model=...`)."""
        if config is None:
            config = EngineConfig.create(**kwargs)
        elif kwargs:
            raise ValueError(f"pass either an EngineConfig or keyword arguments, not both ({sorted(kwargs)})")
        return cls(config)

    # ---- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="deltaserve-engine", daemon=True)
        self._thread.start()

    async def shutdown(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._thread = None
        with self._lock:
            pending = list(self._queues.items())
            self._queues.clear()
        for _, (loop, q) in pending:
            loop.call_soon_threadsafe(q.put_nowait, EngineDeadError("engine shut down"))

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._error is None

    # ---- requests ------------------------------------------------------------------------------
    async def generate(
        self, prompt: PromptType, params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        """Cumulative `RequestOutput`s of one request, one per engine step that changed it.

        The last has `finished=True`. Raises `ValueError` for an invalid request (e.g. a prompt
        longer than max_model_len) before anything is queued. Cancelling the consumer aborts it.
        """
        if self._error is not None:
            raise EngineDeadError(f"engine stopped: {self._error!r}")
        if self._thread is None:
            await self.start()
        with self._lock:
            if request_id in self._queues:
                raise ValueError(f"request_id: {request_id!r} is already running")
        req = self.engine.make_request(request_id, prompt, params)  # validates; raises ValueError
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        with self._lock:
            self._queues[request_id] = (loop, q)
        self._post("add", req)
        finished = False
        try:
            while True:
                item = await q.get()
                if isinstance(item, BaseException):
                    raise item
                if item is _DONE:
                    return
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            with self._lock:
                self._queues.pop(request_id, None)
            if not finished:
                self._post("abort", (request_id, None))

    async def abort(self, request_id: str) -> None:
        """Abort a request; returns once its cache is freed (a no-op for unknown ids)."""
        if self._thread is None or not self._thread.is_alive():
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._post("abort", (request_id, (loop, fut)))
        await fut

    def stats(self) -> dict:
        """Gauges and counters (snapshot after the latest step): num_running, num_waiting,
        kv_cache_usage (0..1), prompt_tokens_total, generation_tokens_total, ..."""
        return dict(self._stats)

    # ---- engine thread -------------------------------------------------------------------------
    def _post(self, kind: str, payload: Any) -> None:
        self._inbox.append((kind, payload))
        self._wake.set()

    def _deliver(self, out: RequestOutput) -> None:
        with self._lock:
            entry = self._queues.get(out.request_id)
        if entry is not None:
            loop, q = entry
            loop.call_soon_threadsafe(q.put_nowait, out)

    def _drain_inbox(self) -> None:
        eng = self.engine
        acks = []
        while self._inbox:
            kind, payload = self._inbox.popleft()
            if kind == "add":
                req: Request = payload
                with self._lock:
                    wanted = req.request_id in self._queues
                if wanted:  # the consumer may already have gone away
                    eng.add_request(req.request_id, req)
            elif kind == "abort":
                request_id, ack = payload
                out = eng.abort_request(request_id)
                if out is not None:
                    self._deliver(out)
                if ack is not None:
                    acks.append(ack)
        if acks:
            self._stats = eng.stats()
            for loop, fut in acks:  # after the stats refresh: an awaited abort is visible in stats()
                loop.call_soon_threadsafe(_resolve, fut)

    def _run(self) -> None:
        eng = self.engine
        idle = env.get("DELTASERVE_ENGINE_IDLE_TIMEOUT_S")
        try:
            while not self._stop.is_set():
                self._wake.clear()
                self._drain_inbox()
                if not eng.has_unfinished_requests():
                    self._stats = eng.stats()
                    self._wake.wait(timeout=idle)
                    continue
                for out in eng.step():
                    self._deliver(out)
                self._stats = eng.stats()
        except BaseException as exc:  # surface to every waiting request
            logger.exception("engine thread died")
            self._error = exc
            with self._lock:
                pending = list(self._queues.values())
            for loop, q in pending:
                loop.call_soon_threadsafe(q.put_nowait, EngineDeadError(f"engine stopped: {exc!r}"))


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
