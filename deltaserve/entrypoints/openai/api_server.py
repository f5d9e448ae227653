"""The OpenAI-compatible HTTP server (FastAPI): routes, error handling, API key, uvicorn runner.

Endpoints: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health,
GET /version, GET /metrics (Prometheus, vLLM names), POST /tokenize, POST /detokenize,
GET /tokenizer_info (lm_eval's remote tokenizer uses it).
Every error is an OpenAI-style body `{"error": {"message", "type", "param", "code"}}`; bad input is
a 4xx, never a 500. With an API key, every /v1 route needs `Authorization: Bearer <key>` (like
vLLM, operational routes — /health, /metrics, /tokenize, /detokenize, /version — stay open).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from deltaserve.entrypoints.openai.engine_client import EngineClient, max_model_len_of
from deltaserve.entrypoints.openai.metrics import CONTENT_TYPE, ServerMetrics
from deltaserve.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
)
from deltaserve.entrypoints.openai.reasoning import REASONING_PARSERS
from deltaserve.entrypoints.openai.serving_base import APIError, ServerState, generation_defaults
from deltaserve.entrypoints.openai.serving_chat import ServingChat, render_chat
from deltaserve.entrypoints.openai.serving_completions import ServingCompletions
from deltaserve.entrypoints.openai.tool_parsers import TOOL_CALL_PARSERS

logger = logging.getLogger("deltaserve.server")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts, param = [], None
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if err.get("type") == "json_invalid":
            return f"Invalid JSON body: {err.get('ctx', {}).get('error', err.get('msg'))}", None
        where = ".".join(loc)
        param = param or (loc[0] if loc else None)
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "invalid request", param


def _error(status: int, message: str, param: str | None = None, type: str | None = None) -> JSONResponse:
    err = APIError(message, status=status, param=param, type=type)
    return JSONResponse(err.body(), status_code=status)


def build_app(
    engine: EngineClient,
    *,
    served_model_names: list[str] | None = None,
    model_dir: str | None = None,
    reasoning_parser: str | None = None,
    tool_call_parser: str | None = None,
    enable_auto_tool_choice: bool = False,
    api_key: str | None = None,
    manage_engine: bool = True,
) -> FastAPI:
    """The FastAPI app serving `engine`.

    `manage_engine`: start the engine on app startup and shut it down on app shutdown.
    `enable_auto_tool_choice` (needs `tool_call_parser`): tool_choice "auto" parses tool calls.
    """
    if tool_call_parser is not None and tool_call_parser not in TOOL_CALL_PARSERS:
        raise ValueError(f"tool_call_parser: {tool_call_parser!r} is not one of {TOOL_CALL_PARSERS}")
    if enable_auto_tool_choice and tool_call_parser is None:
        raise ValueError("enable_auto_tool_choice: requires tool_call_parser to be set")
    if reasoning_parser is not None and reasoning_parser not in REASONING_PARSERS:
        raise ValueError(f"reasoning_parser: {reasoning_parser!r} is not one of {REASONING_PARSERS}")
    model_dir = model_dir or getattr(engine.engine_config, "model", None)
    names = list(served_model_names or [model_dir or "default"])
    state = ServerState(
        engine=engine,
        served_model_names=names,
        max_model_len=max_model_len_of(engine),
        metrics=ServerMetrics(engine.stats, names[0]),
        model_dir=model_dir,
        reasoning_parser=reasoning_parser,
        defaults=generation_defaults(model_dir),
    )
    completions = ServingCompletions(state)
    chat = ServingChat(state, tool_parser=tool_call_parser, enable_auto_tool_choice=enable_auto_tool_choice)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if manage_engine:
            await engine.start()
        try:
            yield
        finally:
            if manage_engine:
                await engine.shutdown()

    app = FastAPI(title="deltaserve", lifespan=lifespan)
    app.state.server = state

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _error(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"{request.method} {request.url.path}: no such route"
        return _error(exc.status_code, message)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    if api_key:
        expected = f"Bearer {api_key}".encode()

        @app.middleware("http")
        async def _check_api_key(request: Request, call_next):
            if request.url.path.startswith("/v1") and request.method != "OPTIONS":
                given = request.headers.get("authorization", "").encode()
                if not hmac.compare_digest(given, expected):
                    return _error(401, "Unauthorized: missing or wrong API key (Authorization: Bearer <key>)")
            return await call_next(request)

    @app.get("/health")
    async def health() -> Response:
        if getattr(engine, "is_running", True) is False and getattr(engine, "_error", None) is not None:
            return _error(503, "engine is not running", type="ServiceUnavailableError")
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as pkg_version

        try:
            return {"version": pkg_version("deltaserve")}
        except PackageNotFoundError:
            return {"version": "unknown"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        cards = [ModelCard(id=n, root=model_dir, max_model_len=state.max_model_len) for n in names]
        return ModelList(data=cards).model_dump()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/v1/completions")
    async def create_completion(req: CompletionRequest, raw: Request) -> Response:
        return await completions.create(req, raw)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(req: ChatCompletionRequest, raw: Request) -> Response:
        return await chat.create(req, raw)

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> dict[str, Any]:
        state.check_model(req.model)
        if req.messages is not None:
            text = render_chat(
                state,
                req.messages,
                tools=req.tools,
                add_generation_prompt=req.add_generation_prompt,
                chat_template_kwargs=req.chat_template_kwargs,
            )
            ids = state.tokenizer.encode(text, add_special_tokens=False)
        else:
            ids = state.tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens)
        out: dict[str, Any] = {"count": len(ids), "max_model_len": state.max_model_len, "tokens": list(ids)}
        if req.return_token_strs:
            out["token_strs"] = state.tokenizer.convert_ids_to_tokens(list(ids))
        return out

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        tok = state.tokenizer
        return {
            "tokenizer_class": type(tok).__name__,
            "eos_token": tok.eos_token,
            "bos_token": tok.bos_token,
            "pad_token": tok.pad_token,
            "chat_template": getattr(tok, "chat_template", None),
            "model_max_length": state.max_model_len,
        }

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> dict[str, str]:
        state.check_model(req.model)
        state.check_token_ids(req.tokens, "tokens")
        return {"prompt": state.tokenizer.decode(req.tokens)}

    return app


def run_server(app: FastAPI, host: str, port: int, log_level: str = "info") -> None:
    """Serve `app` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5)
