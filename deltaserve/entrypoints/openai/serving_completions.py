"""POST /v1/completions: prompts as text, list of texts, token ids or lists of token ids."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from deltaserve.engine.outputs import CompletionOutput, Logprob, RequestOutput
from deltaserve.entrypoints.openai.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    UsageInfo,
    random_id,
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

DEFAULT_MAX_TOKENS = 16  # OpenAI's and vLLM's default for /v1/completions


def _is_id_list(x: object) -> bool:
    return isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def normalize_prompts(prompt: object) -> list[str | list[int]]:
    """The request's prompts, each a text or a token-id list."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if _is_id_list(prompt):
            return [list(prompt)]
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(_is_id_list(p) for p in prompt):
            return [list(p) for p in prompt]
    raise APIError(
        "prompt: must be a string, a list of strings, token ids or lists of token ids", param="prompt"
    )


def completion_logprobs(
    state: ServerState,
    token_ids: list[int],
    entries: list[dict[int, Logprob]] | None,
    start_offset: int,
    prompt_ids: list[int] | None = None,
    prompt_entries: list[dict[int, Logprob] | None] | None = None,
) -> CompletionLogprobs:
    """OpenAI's completions logprobs block for `token_ids` (with `prompt_ids` first when echoing; a
    prompt token's logprob comes from `prompt_entries`, null for the first token or when missing)."""
    out = CompletionLogprobs()
    offset = start_offset

    def add(t: int, entry: dict[int, Logprob] | None) -> None:
        nonlocal offset
        tok = entry.get(t) if entry is not None else None
        token = (
            tok.decoded_token if tok is not None and tok.decoded_token is not None else state.decode_token(t)
        )
        top: dict[str, float] | None = None
        if entry is not None:
            top = {}
            for tid, lp in sorted(entry.items(), key=lambda kv: -kv[1].logprob):
                name = lp.decoded_token if lp.decoded_token is not None else state.decode_token(tid)
                top.setdefault(name, lp.logprob)
        out.tokens.append(token)
        out.token_logprobs.append(tok.logprob if tok is not None else None)
        out.top_logprobs.append(top)
        out.text_offset.append(offset)
        offset += len(token)

    for j, t in enumerate(prompt_ids or []):
        add(t, prompt_entries[j] if prompt_entries is not None and j < len(prompt_entries) else None)
    for j, t in enumerate(token_ids):
        add(t, entries[j] if entries is not None and j < len(entries) else {})
    return out


def _echo_only(req: CompletionRequest) -> bool:
    """`echo` with `max_tokens=0` (lm_eval style scoring): one token is generated and not returned."""
    return req.echo and req.max_tokens == 0 and "max_tokens" in req.model_fields_set


class ServingCompletions:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def _jobs(self, req: CompletionRequest, request_id: str) -> tuple[list[Job], list[str | None]]:
        st = self.state
        jobs, texts = [], []
        for i, prompt in enumerate(normalize_prompts(req.prompt)):
            if isinstance(prompt, str):
                ids = st.tokenizer.encode(prompt, add_special_tokens=True)
                texts.append(prompt)
            else:
                st.check_token_ids(prompt, "prompt")
                ids = prompt
                texts.append(None)
            max_tokens = req.max_tokens if "max_tokens" in req.model_fields_set else DEFAULT_MAX_TOKENS
            max_tokens = st.resolve_max_tokens(len(ids), 1 if _echo_only(req) else max_tokens)
            try:
                params = req.sampling_params(
                    max_tokens=max_tokens, logprobs=req.logprobs, defaults=st.defaults
                )
                if req.echo and req.logprobs is not None:
                    params.prompt_logprobs = req.logprobs
                    params.validate()
            except ValueError as e:
                raise sampling_error(e) from e
            st.check_token_ids(params.stop_token_ids, "stop_token_ids")
            jobs.append(Job(f"{request_id}-{i}", list(ids), params))
        return jobs, texts

    async def create(self, req: CompletionRequest, raw: Request) -> Response:
        model = self.state.check_model(req.model)
        request_id = req.request_id or random_id("cmpl")
        jobs, texts = self._jobs(req, request_id)
        group = RequestGroup(self.state, jobs)
        created = int(time.time())
        if req.stream:
            return GroupStreamingResponse(self._stream(req, group, texts, request_id, model, created), group)
        try:
            finals = await run_unless_disconnected(raw, group)
        except ValueError as e:
            raise APIError(str(e)) from e
        if finals is None:
            return Response(status_code=499)
        choices, usage = [], UsageInfo()
        for i, out in enumerate(finals):
            prompt_ids = out.prompt_token_ids
            usage.prompt_tokens += len(prompt_ids)
            for c in out.outputs:
                if _echo_only(req):
                    c = dataclasses.replace(c, text="", token_ids=[], logprobs=[])
                usage.completion_tokens += len(c.token_ids)
                choices.append(self._choice(req, i * req.n + c.index, c, texts[i], out))
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        resp = CompletionResponse(id=request_id, created=created, model=model, choices=choices, usage=usage)
        return JSONResponse(resp.model_dump())

    def _choice(
        self, req: CompletionRequest, index: int, c: CompletionOutput, text: str | None, out: RequestOutput
    ) -> CompletionChoice:
        prompt_ids = out.prompt_token_ids
        prefix = ""
        if req.echo:
            prefix = text if text is not None else self.state.tokenizer.decode(prompt_ids)
        logprobs = None
        if req.logprobs is not None:
            echo_ids = prompt_ids if req.echo else None
            logprobs = completion_logprobs(
                self.state, c.token_ids, c.logprobs, 0, echo_ids, out.prompt_logprobs
            )
        return CompletionChoice(
            index=index,
            text=prefix + c.text,
            logprobs=logprobs,
            finish_reason=c.finish_reason,
            stop_reason=c.stop_reason,
        )

    async def _stream(
        self,
        req: CompletionRequest,
        group: RequestGroup,
        texts: list[str | None],
        request_id: str,
        model: str,
        created: int,
    ) -> AsyncIterator[str]:
        n = req.n
        sent_text: dict[int, int] = {}
        sent_tokens: dict[int, int] = {}
        offsets: dict[int, int] = {}
        prompt_lens = [0] * len(group.jobs)
        completion_tokens: dict[int, int] = {}
        opts = req.stream_options
        continuous = bool(opts and opts.continuous_usage_stats)

        def usage() -> dict:
            p = sum(prompt_lens)
            c = sum(completion_tokens.values())
            return UsageInfo(prompt_tokens=p, completion_tokens=c, total_tokens=p + c).model_dump()

        try:
            async for i, out in group.outputs():
                prompt_lens[i] = len(out.prompt_token_ids)
                for c in out.outputs:
                    if _echo_only(req):
                        c = dataclasses.replace(c, text="", token_ids=[], logprobs=[])
                    index = i * n + c.index
                    first = index not in sent_text
                    prefix = ""
                    if first:
                        sent_text[index], sent_tokens[index], offsets[index] = 0, 0, 0
                        if req.echo:
                            prefix = (
                                texts[i]
                                if texts[i] is not None
                                else self.state.tokenizer.decode(out.prompt_token_ids)
                            )
                    delta = prefix + c.text[sent_text[index] :]
                    new_ids = c.token_ids[sent_tokens[index] :]
                    completion_tokens[index] = len(c.token_ids)
                    if not delta and not c.finished and not (first and req.echo):
                        continue  # nothing to show yet (e.g. text held back for a stop string)
                    logprobs = None
                    if req.logprobs is not None:
                        entries = (c.logprobs or [])[sent_tokens[index] :]
                        echo_ids = out.prompt_token_ids if (first and req.echo) else None
                        logprobs = completion_logprobs(
                            self.state, new_ids, entries, offsets[index], echo_ids, out.prompt_logprobs
                        ).model_dump()
                        offsets[index] += len(delta)
                    sent_text[index] = max(sent_text[index], len(c.text))  # sent text is never re-sent
                    sent_tokens[index] = len(c.token_ids)
                    chunk = {
                        "id": request_id,
                        "object": "text_completion",
                        "created": created,
                        "model": model,
                        "choices": [
                            {
                                "index": index,
                                "text": delta,
                                "logprobs": logprobs,
                                "finish_reason": c.finish_reason,
                                "stop_reason": c.stop_reason,
                            }
                        ],
                    }
                    if continuous:
                        chunk["usage"] = usage()
                    yield sse(chunk)
            if opts and opts.include_usage:
                yield sse(
                    {
                        "id": request_id,
                        "object": "text_completion",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage(),
                    }
                )
        except Exception as e:
            yield stream_error_event(e)
        yield sse("[DONE]")
