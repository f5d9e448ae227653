"""Shared pieces of the serving classes: errors, prompt checks, running requests on the engine, SSE."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import Request
from starlette.responses import StreamingResponse

from deltaserve.engine.outputs import RequestOutput
from deltaserve.engine.sampling_params import SamplingParams
from deltaserve.entrypoints.openai.engine_client import EngineClient
from deltaserve.entrypoints.openai.metrics import ServerMetrics
from deltaserve.entrypoints.openai.protocol import ErrorInfo, ErrorResponse

logger = logging.getLogger(__name__)

# generation_config.json keys that become request defaults (vLLM's `--generation-config auto`).
_GENERATION_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


class APIError(Exception):
    """An error returned to the client as an OpenAI-style body with this HTTP status."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, type: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.type = type or {
            400: "BadRequestError",
            401: "AuthenticationError",
            404: "NotFoundError",
            405: "MethodNotAllowed",
        }.get(status, "InternalServerError")

    def body(self) -> dict[str, Any]:
        info = ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.status)
        return ErrorResponse(error=info).model_dump()


def generation_defaults(model_dir: str | None) -> dict[str, Any]:
    """Sampling defaults from the checkpoint's generation_config.json (only when it samples)."""
    if not model_dir:
        return {}
    import os

    path = os.path.join(model_dir, "generation_config.json")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return {}
    if cfg.get("do_sample") is False:
        return {}
    return {k: cfg[k] for k in _GENERATION_DEFAULTS if cfg.get(k) is not None}


@dataclass
class ServerState:
    """Everything the handlers share."""

    engine: EngineClient
    served_model_names: list[str]
    max_model_len: int
    metrics: ServerMetrics
    model_dir: str | None = None
    reasoning_parser: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def model_name(self) -> str:
        return self.served_model_names[0]

    @property
    def vocab_limit(self) -> int:
        """Token ids must be below this (the tokenizer's size: ids past it cannot be decoded)."""
        return len(self.tokenizer)

    def check_model(self, model: str | None) -> str:
        if model is None or model in self.served_model_names:
            return self.model_name
        raise APIError(
            f"The model `{model}` does not exist.", status=404, param="model", type="NotFoundError"
        )

    def check_token_ids(self, ids: list[int], param: str) -> None:
        limit = self.vocab_limit
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < limit:
                raise APIError(f"{param}: token id {t!r} is out of range [0, {limit})", param=param)

    def resolve_max_tokens(self, prompt_len: int, max_tokens: int | None, param: str = "max_tokens") -> int:
        """The request's max_tokens, checked against the context (vLLM's rule: reject, never truncate)."""
        limit = self.max_model_len
        if prompt_len == 0:
            raise APIError("prompt: must not be empty", param="prompt")
        if prompt_len >= limit:
            raise APIError(
                f"This model's maximum context length is {limit} tokens. However, your prompt has "
                f"{prompt_len} tokens, which leaves no room for a completion. Please shorten the prompt.",
                param="prompt",
            )
        if max_tokens is None:
            return limit - prompt_len
        if max_tokens < 1:
            raise APIError(f"{param}: must be at least 1, got {max_tokens}", param=param)
        if prompt_len + max_tokens > limit:
            raise APIError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the "
                f"completion). Please reduce the prompt or {param}.",
                param=param,
            )
        return max_tokens

    def decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)


def sampling_error(e: ValueError) -> APIError:
    """SamplingParams.validate() messages start with the field name."""
    msg = str(e)
    return APIError(msg, param=msg.split(" ", 1)[0] or None)


@dataclass
class Job:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams


async def _shielded(coro_fn: Callable[[], Awaitable[None]]) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await coro_fn()
        except Exception:  # the request is gone either way; never mask the original error
            logger.exception("engine.abort failed")


class RequestGroup:
    """Runs several engine requests concurrently and merges their outputs; aborts unfinished ones."""

    def __init__(self, state: ServerState, jobs: list[Job]) -> None:
        self.state = state
        self.jobs = jobs
        self.finished: set[int] = set()
        self.trackers = [state.metrics.tracker() for _ in jobs]
        self._tasks: list[asyncio.Task] = []
        self._closed = False

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Yields (job index, cumulative output) as the engine produces them."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, job: Job) -> None:
            try:
                async for out in self.state.engine.generate(job.prompt_ids, job.params, job.request_id):
                    await queue.put((i, out, None))
                await queue.put((i, None, None))
            except Exception as e:  # handed to the consumer
                await queue.put((i, None, e))

        self._tasks = [asyncio.create_task(pump(i, job)) for i, job in enumerate(self.jobs)]
        remaining = len(self.jobs)
        try:
            while remaining:
                i, out, err = await queue.get()
                if err is not None:
                    raise err
                if out is None:
                    remaining -= 1
                    continue
                self.trackers[i].observe(out)
                if out.finished:
                    self.finished.add(i)
                yield i, out
        finally:
            await self.close()

    async def close(self) -> None:
        """Cancel the pumps and abort every request that has not finished (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for i, job in enumerate(self.jobs):
            if i not in self.finished:
                await _shielded(lambda job=job: self.state.engine.abort(job.request_id))

    async def final_outputs(self) -> list[RequestOutput]:
        last: list[RequestOutput | None] = [None] * len(self.jobs)
        async for i, out in self.outputs():
            last[i] = out
        if any(o is None for o in last):
            raise RuntimeError("engine: a request ended without output")
        return last  # type: ignore[return-value]


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_unless_disconnected(request: Request, group: RequestGroup) -> list[RequestOutput] | None:
    """Final outputs of a non-streaming request, or None (after aborting it) if the client left."""
    work = asyncio.ensure_future(group.final_outputs())
    watch = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        logger.info("client disconnected: aborting %s", [j.request_id for j in group.jobs])
        work.cancel()
        await group.close()
        return None
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
            await group.close()


def sse(data: dict[str, Any] | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n"


class GroupStreamingResponse(StreamingResponse):
    """SSE response that aborts its engine requests however the stream ends (done, error, disconnect)."""

    def __init__(self, content: AsyncIterator[str], group: RequestGroup) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.group = group

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.group.close()


def stream_error_event(e: Exception) -> str:
    err = e if isinstance(e, APIError) else APIError(str(e) or type(e).__name__, status=400)
    if not isinstance(e, APIError | ValueError):
        logger.exception("error while streaming", exc_info=e)
        err = APIError(f"internal error: {type(e).__name__}: {e}", status=500)
    return sse(err.body())
