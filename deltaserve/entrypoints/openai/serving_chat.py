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
    def __init__(self, state: ServerState) -> None:
        self.state = state

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
                self._stream(req, group, request_id, model, created, reason, opened), group
            )
        try:
            finals = await run_unless_disconnected(raw, group)
        except ValueError as e:
            raise APIError(str(e)) from e
        if finals is None:
            return Response(status_code=499)
        out = finals[0]
        choices = [self._choice(req, c, reason, opened) for c in out.outputs]
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
        self, req: ChatCompletionRequest, c: CompletionOutput, reason: bool, opened: bool
    ) -> ChatChoice:
        if reason:
            reasoning, content, _ = split_reasoning(c.text, opened=opened)
        else:
            reasoning, content = None, c.text
        logprobs = None
        if req.logprobs:
            logprobs = chat_logprobs(self.state, c.token_ids, c.logprobs, req.top_logprobs or 0)
        return ChatChoice(
            index=c.index,
            message=ChatResponseMessage(
                content=content if content is not None else "", reasoning_content=reasoning
            ),
            logprobs=logprobs,
            finish_reason=c.finish_reason,
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
    ) -> AsyncIterator[str]:
        base = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model}
        sent_text: dict[int, int] = {}
        sent_tokens: dict[int, int] = {}
        parsers: dict[int, StreamingReasoningState] = {}
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
                        yield chunk(i, {"role": "assistant", "content": ""})
                    delta: dict[str, str] = {}
                    if reason:
                        dr, dc = parsers[i].delta(c.text, final=c.finished)
                        if dr:
                            delta["reasoning_content"] = dr
                        if dc:
                            delta["content"] = dc
                    elif len(c.text) > sent_text[i]:
                        delta["content"] = c.text[sent_text[i] :]
                    if not delta and not c.finished:
                        continue
                    logprobs = None
                    if req.logprobs:
                        new_ids = c.token_ids[sent_tokens[i] :]
                        entries = (c.logprobs or [])[sent_tokens[i] :]
                        logprobs = chat_logprobs(
                            self.state, new_ids, entries, req.top_logprobs or 0
                        ).model_dump()
                    sent_text[i] = max(sent_text[i], len(c.text))
                    sent_tokens[i] = len(c.token_ids)
                    yield chunk(i, delta, logprobs, c.finish_reason, c.stop_reason)
            if opts and opts.include_usage:
                yield sse({**base, "choices": [], "usage": usage()})
        except Exception as e:
            yield stream_error_event(e)
        yield sse("[DONE]")
