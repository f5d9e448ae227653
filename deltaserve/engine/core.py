"""`LLMEngine`: the synchronous core loop shared by the offline `LLM` and the `AsyncEngine`.

`add_request` validates and queues; each `step()` schedules, runs one forward, samples, detokenizes,
applies stop conditions, frees finished sequences' cache and returns the cumulative `RequestOutput`
of every request that changed.

Overlap scheduling (`EngineConfig.overlap_schedule`): a decode step may be left in flight ("pending")
when `step()` returns. The next `step()` then launches the following decode step with the pending
step's sampled ids as device inputs *before* it waits for and processes the pending step, so the
device never idles on the host in steady decode. Outputs come one step later; a sequence the pending
step finishes was computed once more in the step launched after it, and that token is dropped.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deltaserve.config import EngineConfig
from deltaserve.engine import detokenizer as detok
from deltaserve.engine.cache import HybridCache
from deltaserve.engine.outputs import CompletionOutput, GrowingPrefix, Logprob, RequestMetrics, RequestOutput
from deltaserve.engine.request import Request, SeqStatus, Sequence
from deltaserve.engine.runner import LaunchedStep, ModelRunner, PromptChunk, StepResult, seed_for
from deltaserve.engine.sampling_params import SamplingParams
from deltaserve.engine.scheduler import Scheduler, SchedulerOutput

logger = logging.getLogger("deltaserve.engine")

PromptType = str | list[int] | Mapping[str, Any]


@dataclass
class _Pending:
    """A launched step not processed yet, and how many more steps may be launched before it is."""

    sched: SchedulerOutput
    launched: LaunchedStep
    continuations: int


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _private_copy(tokenizer):
    try:
        return copy.deepcopy(tokenizer)
    except Exception:  # an exotic tokenizer that cannot be copied: share it
        return tokenizer


class LLMEngine:
    def __init__(self, config: EngineConfig, *, tokenizer=None, model=None) -> None:
        self.config = config
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.tokenizer)
        # a private copy for detokenization: the AsyncEngine's thread decodes while the event loop
        # (server) encodes with `self.tokenizer`; Rust tokenizers are not meant to be shared so
        decode_tokenizer = _private_copy(self.tokenizer)
        self._decode = detok.fast_decoder(decode_tokenizer)
        self._silent = detok.silent_ids(decode_tokenizer)
        self._token_texts: dict[int, str] = {}  # token id -> its text alone (logprob entries)
        self.runner = ModelRunner(config, model=model)
        self.model_config = self.runner.model_config
        plan = self.runner.plan
        self.cache = HybridCache(plan.num_slots, plan.num_blocks, config.block_size)
        self.scheduler = Scheduler(
            self.cache, max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_num_batched_tokens
        )
        self.requests: dict[str, Request] = {}
        self._seq_ids = itertools.count()
        eos = tuple(self.model_config.eos_token_id)
        if not eos and self.tokenizer.eos_token_id is not None:
            eos = (int(self.tokenizer.eos_token_id),)
        self.eos_ids = eos
        self.num_prompt_tokens = 0
        self.num_generation_tokens = 0
        self.num_steps = 0
        self.num_overlapped_steps = 0  # steps launched before the previous step was processed
        self.num_discarded_tokens = 0  # sampled for a sequence that had finished meanwhile
        self._pending: _Pending | None = None  # launched, not processed yet

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Token ids that end a sequence unless `ignore_eos` (also banned under `min_tokens`)."""
        return self.runner.eos_ids

    @eos_ids.setter
    def eos_ids(self, ids: tuple[int, ...]) -> None:
        self.runner.eos_ids = tuple(int(i) for i in ids)

    # ---- requests ------------------------------------------------------------------------------
    def make_request(
        self, request_id: str, prompt: PromptType, params: SamplingParams | None = None
    ) -> Request:
        """Tokenize and validate (raises `ValueError` naming the problem); does not queue."""
        params = (params if params is not None else SamplingParams()).validate()
        text: str | None = None
        if isinstance(prompt, str):
            text = prompt
            ids = list(self.tokenizer.encode(prompt, add_special_tokens=False))
        elif isinstance(prompt, Mapping):
            if "prompt_token_ids" in prompt:
                ids = list(prompt["prompt_token_ids"])
                text = prompt.get("prompt")
            elif "prompt" in prompt:
                text = prompt["prompt"]
                ids = list(self.tokenizer.encode(text, add_special_tokens=False))
            else:
                raise ValueError("prompt: a dict prompt needs 'prompt' or 'prompt_token_ids'")
        elif isinstance(prompt, list | tuple):
            ids = list(prompt)
        else:
            raise ValueError(f"prompt: expected str, list of token ids or dict, got {type(prompt).__name__}")
        if not ids:
            raise ValueError("prompt: is empty (0 tokens)")
        v = self.model_config.vocab_size
        if any(not isinstance(t, int) or not 0 <= t < v for t in ids):
            raise ValueError(f"prompt: token ids must be integers in [0, {v})")
        limit = self.config.max_model_len
        if len(ids) > limit:
            raise ValueError(
                f"prompt: {len(ids)} tokens is longer than max_model_len ({limit}); shorten it or raise "
                "max_model_len"
            )
        need = self.cache.blocks.blocks_for(min(limit, len(ids) + (params.max_tokens or limit)))
        if need > self.cache.blocks.size:
            raise ValueError(
                f"prompt: needs {need} KV pages but the whole cache has {self.cache.blocks.size}; "
                "lower max_tokens or raise the memory budget"
            )
        if request_id in self.requests:
            raise ValueError(f"request_id: {request_id!r} is already running")
        req = Request(request_id=request_id, prompt=text, prompt_ids=ids, params=params)
        if params.prompt_logprobs is not None:
            req.prompt_logprobs = [None]
        for i in range(params.n):
            seq = Sequence(seq_id=next(self._seq_ids), request=req, index=i, prompt_ids=ids)
            if params.seed is not None:
                seq.generator = self.runner.make_generator(seed_for(params.seed, i))
            seq.detok = detok.new_state(len(ids))
            if params.logprobs is not None:
                seq.logprobs = []
                seq.cumulative_logprob = 0.0
            req.seqs.append(seq)
        return req

    def add_request(
        self, request_id: str, prompt: PromptType | Request, params: SamplingParams | None = None
    ) -> Request:
        req = prompt if isinstance(prompt, Request) else self.make_request(request_id, prompt, params)
        if req.request_id in self.requests:
            raise ValueError(f"request_id: {req.request_id!r} is already running")
        self.requests[req.request_id] = req
        for seq in req.seqs:
            self.scheduler.add(seq)
        return req

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Finish every sequence of the request with reason "abort" and free its cache now."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        req.aborted = True
        for seq in req.seqs:
            if not seq.is_finished:
                seq.finish_reason = "abort"
                self.scheduler.finish(seq)
        req.finished_time = time.time()
        return self._output(req)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests) or self._pending is not None

    def num_unfinished_requests(self) -> int:
        return len(self.requests)

    # ---- the loop ------------------------------------------------------------------------------
    def step(self, *, only_finished: bool = False) -> list[RequestOutput]:
        """One engine step; the cumulative outputs of the requests changed by the step(s) processed in
        this call (or only of those finished, which saves building intermediate outputs for batch use).

        With overlap, a decode step may stay pending when this returns (see the module docstring); a
        call processes it, either right after launching the next step (steady decode) or first."""
        outs: dict[str, RequestOutput] = {}
        pending, self._pending = self._pending, None
        if pending is not None:
            nxt = self._launch_continuation(pending)
            self._collect(pending, only_finished, outs)  # step N+1, if launched, runs meanwhile
            if nxt is not None:
                self._pending = nxt
                return list(outs.values())
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return list(outs.values())
        launched = self.runner.launch(sched)
        self.scheduler.on_step_done(sched)
        self.num_steps += 1
        step = _Pending(sched, launched, self._continuations(sched) if self.config.overlap_schedule else 0)
        if step.continuations > 0:
            self._pending = step
        else:
            self._collect(step, only_finished, outs)
        return list(outs.values())

    def flush(self, *, only_finished: bool = False) -> list[RequestOutput]:
        """Process the pending step, if any, without launching another; its outputs."""
        outs: dict[str, RequestOutput] = {}
        pending, self._pending = self._pending, None
        if pending is not None:
            self._collect(pending, only_finished, outs)
        return list(outs.values())

    def _collect(self, step: _Pending, only_finished: bool, outs: dict[str, RequestOutput]) -> None:
        """Wait for a launched step's tokens and process them; a request's later output replaces its
        earlier one in `outs` (outputs are cumulative)."""
        for out in self._process(step.sched, self.runner.collect(step.launched), only_finished):
            outs.pop(out.request_id, None)
            outs[out.request_id] = out

    def _continuations(self, sched: SchedulerOutput) -> int:
        """How many decode steps may follow the just-launched step `sched`, each launched before its
        predecessor is processed, while its sequences stay the same (0: process it now).

        Only after an all-decode step, and only while the token in flight is not a sequence's last
        by length: with `L` tokens on the host, the step launched while token `L + j` is in flight
        is allowed while `L + j < max_tokens` and `prompt + L + j < max_model_len`. Finishes by EOS /
        stop end the chain another way (the running sequences change). Penalties and min_tokens
        bans count the token in flight on the device (`SamplingBatch.build(in_flight=...)`)."""
        best = self.config.max_model_len
        for e in sched.scheduled:
            if e.num_new != 1 or not e.sample:
                return 0
            best = min(best, self._tokens_left(e.seq) - 1)  # the token in flight is not the last
        return max(0, best)

    def _tokens_left(self, seq: Sequence) -> int:
        """Output tokens `seq` may still get by length (`max_tokens`, `max_model_len`); <= 0: done."""
        p = seq.params
        max_len = self.config.max_model_len
        max_tokens = p.max_tokens if p.max_tokens is not None else max_len
        n_out = len(seq.output_ids)
        return min(max_tokens - n_out, max_len - len(seq.prompt_ids) - n_out)

    def _launch_continuation(self, pending: _Pending) -> _Pending | None:
        """Launch the decode step after the pending one from its device tokens, or None when the
        steady state does not hold: no continuation left (see `_continuations`), the running
        sequences are not exactly the pending step's (one finished, was aborted or is new), a
        waiting request could be admitted, or a page is missing (growing would need a preemption)."""
        if pending.continuations <= 0:
            return None
        sched = self.scheduler
        running, rows = sched.running, pending.sched.scheduled
        if len(running) != len(rows) or any(a is not b.seq for a, b in zip(running, rows)):
            return None
        if sched.could_admit():
            return None
        nxt = sched.schedule_decodes(rows)
        if nxt is None:
            return None
        launched = self.runner.launch(nxt, input_ids=pending.launched.token_ids)
        sched.on_step_done(nxt)
        self.num_steps += 1
        self.num_overlapped_steps += 1
        return _Pending(nxt, launched, pending.continuations - 1)

    def _process(
        self, sched: SchedulerOutput, result: StepResult, only_finished: bool
    ) -> list[RequestOutput]:
        now = time.time()
        for chunk in result.prompt:
            self._add_prompt_logprobs(chunk)
        changed: dict[str, Request] = {}
        token_ids = result.token_ids
        i = 0  # row of the next sampling entry
        dropped = 0
        for entry in sched.scheduled:
            if not entry.sample:
                continue
            seq = entry.seq
            if seq.status is SeqStatus.FINISHED:  # finished/aborted while this step was in flight
                i += 1
                dropped += 1
                continue
            req = seq.request
            output_ids = seq.output_ids
            if not output_ids and seq.index == 0 and seq.num_preemptions == 0:
                self.num_prompt_tokens += len(seq.prompt_ids)
            token = token_ids[i]
            output_ids.append(token)
            if req.first_token_time is None:
                req.first_token_time = now
            if seq.logprobs is not None:
                self._add_logprobs(seq, result, i, token)
            i += 1
            self._check_stop(seq, token)
            if seq.finish_reason is not None:
                self.scheduler.finish(seq)
            changed[req.request_id] = req
        self.num_generation_tokens += i - dropped
        self.num_discarded_tokens += dropped
        outputs = []
        for req in changed.values():
            if req.is_finished:
                req.finished_time = now
                self.requests.pop(req.request_id, None)
            elif only_finished:
                continue
            outputs.append(self._output(req))
        return outputs

    def _add_logprobs(self, seq: Sequence, result: StepResult, i: int, token: int) -> None:
        entry = {token: Logprob(result.sampled_logprob[i], result.sampled_rank[i])}
        n = seq.params.logprobs or 0
        if n and result.top_ids is not None:
            for rank, (tid, lp) in enumerate(zip(result.top_ids[i][:n], result.top_logprobs[i][:n]), start=1):
                if tid not in entry:
                    entry[tid] = Logprob(lp, rank)
        for tid, lp in entry.items():
            lp.decoded_token = self._token_text(tid)
        seq.logprobs.append(entry)
        seq.cumulative_logprob += result.sampled_logprob[i]

    def _add_prompt_logprobs(self, chunk: PromptChunk) -> None:
        req = chunk.request
        if req.prompt_logprobs is None or len(req.prompt_logprobs) != chunk.start:
            return  # aborted meanwhile, or (never expected) out of order: keep the list consistent
        for j, lp in enumerate(chunk.token_logprob):
            token = req.prompt_ids[chunk.start + j]
            entry = {token: Logprob(lp, chunk.rank[j])}
            for rank, (tid, tlp) in enumerate(zip(chunk.top_ids[j], chunk.top_logprobs[j]), start=1):
                if tid not in entry:
                    entry[tid] = Logprob(tlp, rank)
            for tid, e in entry.items():
                e.decoded_token = self._token_text(tid)
            req.prompt_logprobs.append(entry)

    def _token_text(self, token: int) -> str:
        """The text of one token id (special tokens included), as logprob entries show it; memoised.

        Uses the private decoder: this runs on the engine thread."""
        text = self._token_texts.get(token)
        if text is None:
            text = self._token_texts[token] = self._decode([token], False)
        return text

    def _check_stop(self, seq: Sequence, token: int) -> None:
        p = seq.params
        n_out = len(seq.output_ids)
        stop_token = n_out >= p.min_tokens and (
            token in p.stop_token_ids or (not p.ignore_eos and token in self.runner.eos_ids)
        )
        if not stop_token or p.include_stop_str_in_output:
            old_len = len(seq.text)
            state, end = seq.detok, len(seq.prompt_ids) + n_out
            silent = self._silent
            # ids that add no text: only the unread ones are looked at (the window from prefix_offset
            # grows while they last; building it every step would be O(output length))
            if (
                silent is None
                or token not in silent
                or not detok.read_past_silent(
                    seq.tokens(state.read_offset, end), state, p.skip_special_tokens, silent
                )
            ):
                start = state.prefix_offset  # only the detokenizer's window, not all the ids
                window = seq.tokens(start, end)
                seq.text += detok.decode_delta(
                    self._decode, window, state, p.skip_special_tokens, start=start, silent=silent
                )
            if p.stop and not stop_token and n_out >= p.min_tokens:
                hit = detok.find_stop(seq.text, len(seq.text) - old_len, p.stop)
                if hit is not None:
                    stop, idx = hit
                    seq.text = seq.text[: idx + len(stop)] if p.include_stop_str_in_output else seq.text[:idx]
                    seq.finish_reason, seq.stop_reason = "stop", stop
                    return
        if stop_token:
            seq.finish_reason = "stop"
            seq.stop_reason = token if token in p.stop_token_ids else None
            return
        if self._tokens_left(seq) <= 0:
            seq.finish_reason = "length"

    def _output(self, req: Request) -> RequestOutput:
        finished = req.is_finished
        outs = []
        for seq in req.seqs:
            text = seq.text
            if not seq.is_finished:
                hold = detok.holdback(seq.params)
                if hold:
                    text = text[: max(0, len(text) - hold)]
            # running: views of the append-only lists (no per-step copy); finished: lists, once
            snap = list if seq.is_finished else GrowingPrefix
            outs.append(
                CompletionOutput(
                    index=seq.index,
                    text=text,
                    token_ids=snap(seq.output_ids),
                    cumulative_logprob=seq.cumulative_logprob,
                    logprobs=snap(seq.logprobs) if seq.logprobs is not None else None,
                    finish_reason=seq.finish_reason,
                    stop_reason=seq.stop_reason,
                )
            )
        return RequestOutput(
            request_id=req.request_id,
            prompt=req.prompt,
            prompt_token_ids=req.prompt_ids_out(),
            outputs=outs,
            finished=finished,
            metrics=RequestMetrics(req.arrival_time, req.first_token_time, req.finished_time),
            prompt_logprobs=req.prompt_logprobs_out(),
        )

    # ---- introspection ---------------------------------------------------------------------------
    def stats(self) -> dict:
        return {
            "num_running": len({s.request.request_id for s in self.scheduler.running}),
            "num_waiting": len(
                {s.request.request_id for s in self.scheduler.waiting}
                - {s.request.request_id for s in self.scheduler.running}
            ),
            "num_running_seqs": len(self.scheduler.running),
            "num_waiting_seqs": len(self.scheduler.waiting),
            "kv_cache_usage": self.cache.usage(),
            "state_slot_usage": self.cache.slots.usage(),
            "prompt_tokens_total": self.num_prompt_tokens,
            "generation_tokens_total": self.num_generation_tokens,
            "num_preemptions_total": self.scheduler.num_preemptions,
            "num_steps_total": self.num_steps,
        }

    def check_integrity(self) -> None:
        """Raise `CacheError` unless live sequences own exactly the allocated pages and slots."""
        live = [s for s in self.scheduler.live_seqs() if s.status is not SeqStatus.FINISHED]
        self.cache.check_integrity(live)
