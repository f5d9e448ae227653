"""Requests and their sequences: the engine's per-request bookkeeping (pure Python).

A `Request` with `n` continuations owns `n` `Sequence`s; each sequence is scheduled, cached and
sampled on its own (its own GDN state slot, KV pages and random generator).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from deltaserve.engine.outputs import Logprob
from deltaserve.engine.sampling_params import SamplingParams


class SeqStatus(enum.Enum):
    WAITING = "waiting"  # not holding cache (new, or preempted and waiting to be recomputed)
    RUNNING = "running"  # holds a state slot and KV pages
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One continuation. Tokens `all_ids[:num_computed]` are in the cache (KV pages + GDN state)."""

    seq_id: int
    request: Request
    index: int  # which of the request's n continuations
    prompt_ids: list[int]
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    status: SeqStatus = SeqStatus.WAITING
    slot: int | None = None
    blocks: list[int] = field(default_factory=list)
    generator: Any = None  # torch.Generator for seeded requests (created by the runner)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    text: str = ""  # detokenized output (truncated at a stop string when one matched)
    detok: Any = None  # incremental detokenizer state
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float | None = None
    num_preemptions: int = 0
    token_counts: dict[int, int] | None = None  # output-token counts (penalties)

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_uncomputed(self) -> int:
        return self.num_tokens - self.num_computed

    @property
    def is_finished(self) -> bool:
        return self.status is SeqStatus.FINISHED

    def token_at(self, pos: int) -> int:
        n = len(self.prompt_ids)
        return self.prompt_ids[pos] if pos < n else self.output_ids[pos - n]

    def tokens(self, start: int, end: int) -> list[int]:
        n = len(self.prompt_ids)
        if end <= n:
            return self.prompt_ids[start:end]
        if start >= n:
            return self.output_ids[start - n : end - n]
        return self.prompt_ids[start:] + self.output_ids[: end - n]


@dataclass(eq=False)
class Request:
    request_id: str
    prompt: str | None
    prompt_ids: list[int]
    params: SamplingParams
    arrival_time: float = field(default_factory=time.time)
    seqs: list[Sequence] = field(default_factory=list)
    first_token_time: float | None = None
    finished_time: float | None = None
    aborted: bool = False
    # filled during prefill by continuation 0 when params.prompt_logprobs is set; entry k belongs to
    # prompt token k (entry 0 is None); recomputation after preemption never appends twice
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    # what outputs hand out for the prompt: one copy per request, shared by all its outputs (the
    # engine never reads them back), so a streamed step does not copy an 8k-token prompt per request
    _prompt_ids_out: list[int] | None = field(default=None, repr=False)
    _prompt_logprobs_out: list | None = field(default=None, repr=False)

    def prompt_ids_out(self) -> list[int]:
        """The prompt ids for a `RequestOutput` (a copy made once, then shared)."""
        if self._prompt_ids_out is None:
            self._prompt_ids_out = list(self.prompt_ids)
        return self._prompt_ids_out

    def prompt_logprobs_out(self) -> list | None:
        """The prompt logprobs for a `RequestOutput`: a fresh copy while prefill still appends to
        them, then one copy shared by every later output."""
        lps = self.prompt_logprobs
        if lps is None or len(lps) < len(self.prompt_ids):
            return None if lps is None else list(lps)
        if self._prompt_logprobs_out is None:
            self._prompt_logprobs_out = list(lps)
        return self._prompt_logprobs_out

    def prompt_logprob_targets(self, start: int, end: int) -> tuple[int, int]:
        """Prompt tokens `[lo, hi)` whose logprob is still missing and can be computed from the hidden
        rows of positions `[start, end)` (token k needs position k - 1); empty when `lo >= hi`."""
        if self.prompt_logprobs is None:
            return 0, 0
        return max(start + 1, len(self.prompt_logprobs)), min(end + 1, len(self.prompt_ids))

    @property
    def is_finished(self) -> bool:
        return all(s.is_finished for s in self.seqs)
