"""Continuous-batching scheduler: decode-first, chunked prefill under a token budget, preemption.

Each step it picks `(sequence, num_new_tokens)` pairs:
1. running sequences that decode (one token each), oldest first;
2. running sequences still prefilling (a prompt chunk, or recomputation after preemption);
3. waiting sequences (FCFS) while a state slot, pages and token budget remain and nothing had to be
   preempted this step.
When a running sequence needs a page and none is free, the newest running sequence is preempted by
recompute: its pages and state slot are freed and it goes back to the front of the queue; later its
prompt and generated tokens are prefilled again to rebuild the state.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from deltaserve.engine.cache import HybridCache
from deltaserve.engine.request import SeqStatus, Sequence


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new: int  # tokens all_ids[num_computed : num_computed + num_new] are computed this step
    sample: bool  # the chunk ends at the last known token: sample the next one


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, cache: HybridCache, *, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.cache = cache
        self.max_num_seqs = min(max_num_seqs, cache.slots.size)
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order (oldest first)
        self.num_preemptions = 0

    # ---- queue management ----------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)

    def finish(self, seq: Sequence) -> None:
        """Drop `seq` from the queues and free its cache at once (finished or aborted)."""
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SeqStatus.WAITING:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        self.cache.release(seq)
        seq.status = SeqStatus.FINISHED

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def live_seqs(self) -> list[Sequence]:
        return list(self.running) + list(self.waiting)

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.cache.release(seq)
        seq.num_computed = 0
        seq.status = SeqStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        out.preempted.append(seq)

    # ---- one step ------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        chosen: dict[int, ScheduledSeq] = {}  # seq_id -> entry, insertion ordered
        todo = [(s, s.num_uncomputed) for s in self.running]  # fixed unless preempted (then skipped)
        decodes = [t for t in todo if t[1] == 1]
        prefills = [t for t in todo if t[1] > 1]
        running, grow = SeqStatus.RUNNING, self.cache.grow
        for seq, left in decodes + prefills:
            if seq.status is not running:  # preempted earlier in this loop
                continue
            if budget <= 0:
                break
            n = min(left, budget)
            while not grow(seq, seq.num_computed + n):
                victim = self.running[-1]  # newest running sequence
                entry = chosen.pop(victim.seq_id, None)
                if entry is not None:
                    budget += entry.num_new
                self._preempt(victim, out)
                if victim is seq:
                    break
            if seq.status is not running:
                continue
            chosen[seq.seq_id] = ScheduledSeq(seq, n, n == left)
            budget -= n
        if not out.preempted:
            while n := self._admit_size(budget):
                seq = self.waiting.popleft()
                self.cache.admit(seq)
                self.cache.grow(seq, seq.num_computed + n)
                seq.status = SeqStatus.RUNNING
                self.running.append(seq)
                chosen[seq.seq_id] = ScheduledSeq(seq, n, seq.num_computed + n == seq.num_tokens)
                budget -= n
        out.scheduled = list(chosen.values())
        return out

    def _admit_size(self, budget: int) -> int:
        """Tokens the head of the waiting queue would be admitted with under `budget`, or 0 when it
        cannot be now (no one waiting, no budget, `max_num_seqs` running, or no room in the cache).
        A waiting sequence always has uncomputed tokens, so an admission is never 0 tokens."""
        if not self.waiting or budget <= 0 or len(self.running) >= self.max_num_seqs:
            return 0
        seq = self.waiting[0]
        n = min(seq.num_uncomputed, budget)
        return n if self.cache.can_admit(seq, seq.num_computed + n) else 0

    def could_admit(self) -> bool:
        """Whether `schedule()` might admit a waiting sequence now (errs towards True)."""
        return self._admit_size(self.max_num_batched_tokens - len(self.running)) > 0  # after 1 token each

    def schedule_decodes(self, rows: list[ScheduledSeq]) -> SchedulerOutput | None:
        """Decode rows `rows` (`(seq, 1, True)` of the running sequences, in order) again, for
        sequences whose last token is still in flight: pages for position `num_computed` are taken
        for all of them, or for none (returns None) when that would need a preemption. `schedule()`
        is not consulted: it would see these sequences as caught up (`num_uncomputed == 0`)."""
        cache = self.cache
        bs = cache.block_size
        short = [e.seq for e in rows if len(e.seq.blocks) * bs <= e.seq.num_computed]  # at a page boundary
        if short:
            if not cache.blocks.can_allocate(sum(cache.blocks_needed(s, s.num_computed + 1) for s in short)):
                return None
            for s in short:
                cache.grow(s, s.num_computed + 1)
        return SchedulerOutput(scheduled=rows)

    def on_step_done(self, out: SchedulerOutput) -> None:
        """Advance `num_computed` of everything that ran (call before appending sampled tokens)."""
        for entry in out.scheduled:
            entry.seq.num_computed += entry.num_new
