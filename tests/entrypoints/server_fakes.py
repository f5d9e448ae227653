"""Test helpers for the server tests: a fake engine and a background uvicorn server.

`FakeEngine` implements `EngineClient` with a deterministic toy "model" (next token = a hash of the
last tokens, drawn from ordinary word tokens), its own detokenization and stop-string handling (with
vLLM's semantics: stop strings cut the text, streamed text holds back a possible stop prefix), a
`max_num_seqs` queue, per-token "cache" accounting and abort — enough to test the HTTP layer exactly,
fast, without the real engine.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from dataclasses import dataclass, field

import pytest

from deltaserve.engine.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from deltaserve.engine.sampling_params import SamplingParams

# A test module importing these helpers is skipped, with this reason, where the HTTP server packages
# are absent (e.g. a bare GPU machine running `pytest -m gpu`); `httpx` is re-exported for its tests.
_NO_HTTP = "the HTTP server packages (fastapi, uvicorn, httpx) are not installed here"
pytest.importorskip("fastapi", reason=_NO_HTTP)
pytest.importorskip("uvicorn", reason=_NO_HTTP)
httpx = pytest.importorskip("httpx", reason=_NO_HTTP)

EOS_ID = 151645


@dataclass
class FakeConfig:
    model: str
    max_model_len: int = 256


@dataclass
class _Seq:
    index: int
    rng: random.Random
    ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[dict[int, Logprob]] | None = None
    cum: float = 0.0
    finish: str | None = None
    stop_reason: int | str | None = None


class FakeEngine:
    """A fast deterministic stand-in for `AsyncEngine` (same interface)."""

    def __init__(
        self,
        tokenizer,
        model_dir: str,
        *,
        max_model_len: int = 256,
        max_num_seqs: int = 4,
        step_s: float = 0.002,
    ) -> None:
        self.tokenizer = tokenizer
        self.model_config = FakeConfig(model_dir, max_model_len)
        self.engine_config = FakeConfig(model_dir, max_model_len)
        self.max_num_seqs = max_num_seqs
        self.step_s = step_s
        self.slots: asyncio.Semaphore | None = None  # created in the server's event loop
        self.waiting: set[str] = set()
        self.running: dict[str, int] = {}  # request id -> tokens held in "cache"
        self.aborted: set[str] = set()
        self.cache_capacity = max_num_seqs * max_model_len
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.started = False
        self.max_concurrent_seen = 0
        self.words = self._word_tokens()
        self.requests_seen: list[tuple[str, list[int], SamplingParams]] = []
        self.script: list[int] | None = None  # if set: the output of every request (then EOS)

    def _word_tokens(self) -> list[int]:
        out = []
        for i in range(1000, 40000):
            s = self.tokenizer.decode([i])
            if len(s) >= 3 and s[0] == " " and s[1:].isascii() and s[1:].isalpha():
                out.append(i)
            if len(out) >= 512:
                break
        return out

    async def start(self) -> None:
        self.started = True

    async def shutdown(self) -> None:
        self.started = False

    def stats(self) -> dict:
        used = sum(self.running.values())
        return {
            "num_running": len(self.running),
            "num_waiting": len(self.waiting),
            "kv_cache_usage": used / self.cache_capacity,
            "prompt_tokens_total": self.prompt_tokens_total,
            "generation_tokens_total": self.generation_tokens_total,
        }

    async def abort(self, request_id: str) -> None:
        self.aborted.add(request_id)
        self.running.pop(request_id, None)
        self.waiting.discard(request_id)

    def _next(
        self, prompt: list[int], seq: _Seq, params: SamplingParams
    ) -> tuple[int, list[tuple[int, float]]]:
        if self.script is not None:
            k = len(seq.ids)
            return (self.script[k] if k < len(self.script) else EOS_ID), [(EOS_ID, -1.0)]
        ctx = (prompt + seq.ids)[-3:]
        h = (sum((k + 1) * t for k, t in enumerate(ctx)) * 2654435761 + len(seq.ids)) % len(self.words)
        ranked = [self.words[(h + k * 7) % len(self.words)] for k in range(21)]
        lps = [(t, -0.5 - 0.25 * k) for k, t in enumerate(ranked)]
        if params.greedy:
            pick = 0
        else:
            pick = min(int(seq.rng.expovariate(1.0) * params.temperature * 2), 20)
        return ranked[pick], lps

    async def generate(self, prompt: str | list[int], params: SamplingParams, request_id: str):
        if self.slots is None:
            self.slots = asyncio.Semaphore(self.max_num_seqs)
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        limit = self.engine_config.max_model_len
        if len(ids) >= limit:
            raise ValueError(f"prompt: {len(ids)} tokens is longer than max_model_len ({limit})")
        params.validate()
        self.requests_seen.append((request_id, ids, params))
        arrival = time.time()
        self.waiting.add(request_id)
        try:
            async with self.slots:
                self.waiting.discard(request_id)
                if request_id in self.aborted:
                    return
                self.running[request_id] = len(ids) * params.n
                self.max_concurrent_seen = max(self.max_concurrent_seen, len(self.running))
                self.prompt_tokens_total += len(ids)
                base_seed = params.seed if params.seed is not None else random.randrange(1 << 30)
                seqs = [
                    _Seq(
                        i,
                        random.Random(base_seed * 1000 + i),
                        logprobs=[] if params.logprobs is not None else None,
                    )
                    for i in range(params.n)
                ]
                first_token_time = None
                for _step in itertools.count():
                    await asyncio.sleep(self.step_s)
                    if request_id in self.aborted:
                        yield self._output(
                            request_id, prompt, ids, seqs, arrival, first_token_time, abort=True
                        )
                        return
                    for seq in seqs:
                        if seq.finish is None:
                            self._step(ids, seq, params, limit)
                    first_token_time = first_token_time or time.time()
                    self.running[request_id] = len(ids) * params.n + sum(len(s.ids) for s in seqs)
                    out = self._output(request_id, prompt, ids, seqs, arrival, first_token_time)
                    yield out
                    if out.finished:
                        return
        finally:
            self.waiting.discard(request_id)
            self.running.pop(request_id, None)

    def _step(self, prompt: list[int], seq: _Seq, p: SamplingParams, limit: int) -> None:
        token, lps = self._next(prompt, seq, p)
        if p.min_tokens <= len(seq.ids) and len(seq.ids) == 0 and prompt[-1:] == [7]:
            token = EOS_ID  # prompts ending in token 7 "emit EOS" first (for finish_reason tests)
        seq.ids.append(token)
        self.generation_tokens_total += 1
        if seq.logprobs is not None:
            lp_of = dict(lps)
            chosen = lp_of.get(token, -math.log(2))
            entry = {
                token: Logprob(chosen, rank=1 + [t for t, _ in lps].index(token) if token in lp_of else None)
            }
            for rank, (t, lp) in enumerate(lps[: p.logprobs], start=1):
                entry.setdefault(t, Logprob(lp, rank=rank))
            seq.logprobs.append(entry)
            seq.cum += chosen
        n_out = len(seq.ids)
        stop_token = n_out >= p.min_tokens and (
            token in p.stop_token_ids or (not p.ignore_eos and token == EOS_ID)
        )
        if not stop_token or p.include_stop_str_in_output:
            text = self.tokenizer.decode(seq.ids, skip_special_tokens=p.skip_special_tokens)
            old = len(seq.text)
            if not text.endswith("\ufffd"):  # an incomplete UTF-8 character waits for the next token
                seq.text = text
            if not stop_token and n_out >= p.min_tokens and p.stop:
                hits = [(seq.text.find(st, max(0, old - len(st) + 1)), st) for st in p.stop]
                hits = [(i, st) for i, st in hits if i >= 0]
                if hits:
                    idx, stop = min(hits)
                    seq.text = seq.text[: idx + len(stop)] if p.include_stop_str_in_output else seq.text[:idx]
                    seq.finish, seq.stop_reason = "stop", stop
                    return
        if stop_token:
            seq.finish = "stop"
            seq.stop_reason = token if token in p.stop_token_ids else None
            return
        max_tokens = p.max_tokens if p.max_tokens is not None else limit
        if n_out >= max_tokens or len(prompt) + n_out >= limit:
            seq.finish = "length"

    def _output(self, rid, prompt, ids, seqs, arrival, first, abort: bool = False) -> RequestOutput:
        outs = []
        for s in seqs:
            if abort and s.finish is None:
                s.finish = "abort"
            text = s.text
            if s.finish is None:
                p = self._params_of(rid)
                if p.stop and not p.include_stop_str_in_output:
                    text = text[: max(0, len(text) - max(len(st) for st in p.stop) + 1)]
            outs.append(
                CompletionOutput(
                    index=s.index,
                    text=text,
                    token_ids=list(s.ids),
                    cumulative_logprob=s.cum,
                    logprobs=list(s.logprobs) if s.logprobs is not None else None,
                    finish_reason=s.finish,
                    stop_reason=s.stop_reason,
                )
            )
        finished = all(o.finish_reason is not None for o in outs)
        return RequestOutput(
            request_id=rid,
            prompt=prompt if isinstance(prompt, str) else None,
            prompt_token_ids=list(ids),
            outputs=outs,
            finished=finished,
            metrics=RequestMetrics(arrival, first, time.time() if finished else None),
        )

    def _params_of(self, rid: str) -> SamplingParams:
        for r, _, p in reversed(self.requests_seen):
            if r == rid:
                return p
        raise KeyError(rid)


class ThreadServer:
    """uvicorn serving an app on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self, app) -> None:
        import socket
        import threading

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_keep_alive=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
