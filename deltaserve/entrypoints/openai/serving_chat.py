"""POST /v1/chat/completions: the checkpoint's chat template, reasoning split, streaming deltas."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from deltaserve.engine.outputs import CompletionOutput, Logprob
from deltaserve.entrypoints.openai.protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessage,
    ChatResponseMessage,
    ChatTokenLogprob,
    TopLogprob,
    UsageInfo,
    random_id,
)
from deltaserve.entrypoints.openai.reasoning import (
    StreamingReasoningState,
    prompt_opens_think,
    split_reasoning,
)
from deltaserve.entrypoints.openai.serving_base import (
    APIError,
    GroupStreamingResponse,
    Job,
    RequestGroup,
    ServerState,
    run_unless_disconnected,
    sampling_error,
    sse,
    stream_error_event,
)
from deltaserve.entrypoints.openai.tool_parsers import ToolParser, ToolStreamState, make_tool_parser


def render_chat(
    state: ServerState,
    messages: list[ChatMessage],
    *,
    tools: list[dict[str, Any]] | None,
    add_generation_prompt: bool,
    continue_final_message: bool = False,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> str:
    """The prompt text from the checkpoint's chat template (template errors -> 400)."""
    tok = state.tokenizer
    if not getattr(tok, "chat_template", None):
        raise APIError("messages: this model has no chat template; use /v1/completions", param="messages")
    try:
        dicts = [m.template_dict() for m in messages]
    except ValueError as e:
        raise APIError(str(e), param="messages") from e
    kwargs = dict(chat_template_kwargs or {})
    for reserved in ("messages", "tools", "tokenize", "add_generation_prompt", "continue_final_message"):
        if reserved in kwargs:
            raise APIError(f"chat_template_kwargs: may not set {reserved!r}", param="chat_template_kwargs")
    try:
        text = tok.apply_chat_template(
            dicts,
            tools=tools,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            **kwargs,
        )
    except Exception as e:  # jinja2 errors, missing keys, ...: all caused by the request
        raise APIError(
            f"messages: the chat template failed: {type(e).__name__}: {e}", param="messages"
        ) from e
    if not isinstance(text, str):
        raise APIError("messages: the chat template did not produce text", param="messages")
    return text


def chat_logprobs(
    state: ServerState, token_ids: list[int], entries: list[dict[int, Logprob]] | None, top_n: int
) -> ChatLogprobs:
    content = []
    for j, t in enumerate(token_ids):
        entry = entries[j] if entries is not None and j < len(entries) else {}

        def name(tid: int, lp: Logprob | None) -> str:
            return (
                lp.decoded_token
                if lp is not None and lp.decoded_token is not None
                else state.decode_token(tid)
            )

        tops = [
            TopLogprob(token=name(tid, lp), logprob=lp.logprob, bytes=list(name(tid, lp).encode()))
            for tid, lp in sorted(entry.items(), key=lambda kv: -kv[1].logprob)[:top_n]
        ]
        tok = entry.get(t)
        token = name(t, tok)
        content.append(
            ChatTokenLogprob(
                token=token,
                logprob=tok.logprob if tok is not None else float("nan"),
                bytes=list(token.encode()),
                top_logprobs=tops,
            )
        )
    return ChatLogprobs(content=content)


class ServingChat:
    """Chat completions; `tool_parser` (one of TOOL_CALL_PARSERS, or None) with `enable_auto_tool_choice`
    allows tool_choice "auto". A named tool_choice prefills the parser's call markup (hermes when no
    parser is set; no guided decoding)."""

    def __init__(
        self, state: ServerState, *, tool_parser: str | None = None, enable_auto_tool_choice: bool = False
    ) -> None:
        self.state = state
        self.tool_parser = tool_parser
        self.enable_auto_tool_choice = enable_auto_tool_choice

    def _tool_prefix(self, req: ChatCompletionRequest) -> str | None:
        """None: no tool parsing; else the text the parser sees before the output ("" for auto)."""
        if req.tool_choice == "auto":
            if not (self.enable_auto_tool_choice and self.tool_parser):
                raise APIError(
                    '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
                    param="tool_choice",
                )
            return ""
        name = req.named_tool()
        return self._parser(req).named_prefix(name) if name is not None else None

    def _parser(self, req: ChatCompletionRequest) -> ToolParser:
        """The request's tool-call parser (typed by its `tools`); hermes when none is configured."""
        return make_tool_parser(self.tool_parser or "hermes", req.tools)

    async def create(self, req: ChatCompletionRequest, raw: Request) -> Response:
        st = self.state
        model = st.check_model(req.model)
        request_id = req.request_id or random_id("chatcmpl")
        prompt_text = render_chat(
            st,
            req.messages,
            tools=req.tools,
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message,
            chat_template_kwargs=req.chat_template_kwargs,
        )
        tool_prefix = self._tool_prefix(req)
        if tool_prefix:  # named function: close an open think block, then open the call
            if prompt_opens_think(prompt_text):
                prompt_text += "</think>\n\n"
            prompt_text += tool_prefix
        prompt_ids = st.tokenizer.encode(prompt_text, add_special_tokens=False)
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        max_tokens = st.resolve_max_tokens(len(prompt_ids), requested, param)
        top_n = (req.top_logprobs or 0) if req.logprobs else None
        try:
            params = req.sampling_params(max_tokens=max_tokens, logprobs=top_n, defaults=st.defaults)
        except ValueError as e:
            raise sampling_error(e) from e
        st.check_token_ids(params.stop_token_ids, "stop_token_ids")
        group = RequestGroup(st, [Job(request_id, prompt_ids, params)])
        reason = st.reasoning_parser is not None and req.include_reasoning
        opened = reason and prompt_opens_think(prompt_text)
        created = int(time.time())
        if req.stream:
            return GroupStreamingResponse(
                self._stream(req, group, request_id, model, created, reason, opened, tool_prefix), group
            )
        try:
            finals = await run_unless_disconnected(raw, group)
        except ValueError as e:
            raise APIError(str(e)) from e
        if finals is None:
            return Response(status_code=499)
        out = finals[0]
        choices = [self._choice(req, c, reason, opened, tool_prefix) for c in out.outputs]
        completion = sum(len(c.token_ids) for c in out.outputs)
        usage = UsageInfo(
            prompt_tokens=len(out.prompt_token_ids),
            completion_tokens=completion,
            total_tokens=len(out.prompt_token_ids) + completion,
        )
        resp = ChatCompletionResponse(
            id=request_id, created=created, model=model, choices=choices, usage=usage
        )
        return JSONResponse(resp.model_dump())

    def _choice(
        self,
        req: ChatCompletionRequest,
        c: CompletionOutput,
        reason: bool,
        opened: bool,
        tool_prefix: str | None,
    ) -> ChatChoice:
        if reason:
            reasoning, content, _ = split_reasoning(c.text, opened=opened)
        else:
            reasoning, content = None, c.text
        tool_calls: list[dict[str, Any]] = []
        finish_reason = c.finish_reason
        if tool_prefix is not None:
            parsed, tool_calls = self._parser(req).extract(tool_prefix + (content or ""))
            if tool_calls or not tool_prefix:  # a named call that did not parse: the raw text
                content = parsed
            if tool_calls and not tool_prefix:  # auto (vLLM: a named call keeps the engine's reason)
                finish_reason = "tool_calls"
        logprobs = None
        if req.logprobs:
            logprobs = chat_logprobs(self.state, c.token_ids, c.logprobs, req.top_logprobs or 0)
        return ChatChoice(
            index=c.index,
            message=ChatResponseMessage(
                content=content if content is not None or tool_calls else "",
                reasoning_content=reasoning,
                tool_calls=tool_calls,
            ),
            logprobs=logprobs,
            finish_reason=finish_reason,
            stop_reason=c.stop_reason,
        )

    async def _stream(
        self,
        req: ChatCompletionRequest,
        group: RequestGroup,
        request_id: str,
        model: str,
        created: int,
        reason: bool,
        opened: bool,
        tool_prefix: str | None,
    ) -> AsyncIterator[str]:
        base = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model}
        sent_text: dict[int, int] = {}
        sent_tokens: dict[int, int] = {}
        parsers: dict[int, StreamingReasoningState] = {}
        tool_states: dict[int, ToolStreamState] = {}
        tool_parser = self._parser(req)
        content_so_far: dict[int, str] = {}
        prompt_len = 0
        completion_tokens: dict[int, int] = {}
        opts = req.stream_options
        continuous = bool(opts and opts.continuous_usage_stats)

        def usage() -> dict:
            c = sum(completion_tokens.values())
            return UsageInfo(
                prompt_tokens=prompt_len, completion_tokens=c, total_tokens=prompt_len + c
            ).model_dump()

        def chunk(index: int, delta: dict, logprobs=None, finish=None, stop_reason=None) -> str:
            data = {
                **base,
                "choices": [
                    {
                        "index": index,
                        "delta": delta,
                        "logprobs": logprobs,
                        "finish_reason": finish,
                        "stop_reason": stop_reason,
                    }
                ],
            }
            if continuous:
                data["usage"] = usage()
            return sse(data)

        try:
            async for _, out in group.outputs():
                prompt_len = len(out.prompt_token_ids)
                for c in out.outputs:
                    i = c.index
                    completion_tokens[i] = len(c.token_ids)
                    if i not in sent_text:
                        sent_text[i], sent_tokens[i] = 0, 0
                        parsers[i] = StreamingReasoningState(opened=opened)
                        tool_states[i], content_so_far[i] = tool_parser.stream_state(), ""
                        yield chunk(i, {"role": "assistant", "content": ""})
                    delta: dict[str, Any] = {}
                    if reason:
                        dr, dc = parsers[i].delta(c.text, final=c.finished)
                        if dr:
                            delta["reasoning_content"] = dr
                    else:
                        dc = c.text[sent_text[i] :] or None
                    if tool_prefix is not None:  # tools from the content part, after reasoning
                        content_so_far[i] = content_so_far[i] + (dc or "") if reason else c.text
                        ts = tool_states[i]
                        dc, calls = ts.delta(tool_prefix + content_so_far[i], final=c.finished)
                        if tool_prefix and c.finished and not ts.called and ts.sent_content == 0:
                            dc = content_so_far[i] or None  # the named call did not parse: raw text
                        if calls:
                            delta["tool_calls"] = calls
                    if dc:
                        delta["content"] = dc
                    if not delta and not c.finished:
                        continue
                    finish = c.finish_reason
                    if finish is not None and not tool_prefix and tool_states[i].called:
                        finish = "tool_calls"
                    logprobs = None
                    if req.logprobs:
                        new_ids = c.token_ids[sent_tokens[i] :]
                        entries = (c.logprobs or [])[sent_tokens[i] :]
                        logprobs = chat_logprobs(
                            self.state, new_ids, entries, req.top_logprobs or 0
                        ).model_dump()
                    sent_text[i] = max(sent_text[i], len(c.text))
                    sent_tokens[i] = len(c.token_ids)
                    yield chunk(i, delta, logprobs, finish, c.stop_reason)
            if opts and opts.include_usage:
                yield sse({**base, "choices": [], "usage": usage()})
        except Exception as e:
            yield stream_error_event(e)
        yield sse("[DONE]")
