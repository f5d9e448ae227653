"""Scheduler policy on pure bookkeeping (no model): budgets, decode-first, preemption, abort."""

from __future__ import annotations

import itertools

from deltaserve.engine.cache import HybridCache
from deltaserve.engine.request import Request, SeqStatus, Sequence
from deltaserve.engine.sampling_params import SamplingParams
from deltaserve.engine.scheduler import ScheduledSeq, Scheduler

_ids = itertools.count()


def _seq(prompt_len: int) -> Sequence:
    req = Request(
        request_id=str(next(_ids)), prompt=None, prompt_ids=list(range(prompt_len)), params=SamplingParams()
    )
    seq = Sequence(seq_id=next(_ids), request=req, index=0, prompt_ids=req.prompt_ids)
    req.seqs.append(seq)
    return seq


def _advance(sched: Scheduler, out) -> None:
    """What the engine does after a step: count computed tokens, append a token to sampling rows."""
    sched.on_step_done(out)
    for e in out.scheduled:
        if e.sample:
            e.seq.output_ids.append(7)


def _make(num_slots=4, num_blocks=32, block_size=4, max_num_seqs=4, budget=16) -> Scheduler:
    cache = HybridCache(num_slots, num_blocks, block_size)
    return Scheduler(cache, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget)


def test_chunked_prefill_respects_token_budget():
    s = _make(budget=8)
    a = _seq(20)
    s.add(a)
    chunks = []
    while not a.output_ids:
        out = s.schedule()
        assert out.num_tokens <= 8
        chunks.append((out.scheduled[0].num_new, out.scheduled[0].sample))
        _advance(s, out)
    assert chunks == [(8, False), (8, False), (4, True)]
    assert a.num_computed == 20 and len(a.blocks) == 5


def test_decode_first_then_prefill_then_new():
    s = _make(budget=6)
    a, b = _seq(3), _seq(10)
    s.add(a)
    s.add(b)
    out = s.schedule()  # a's prompt (3) + 3 tokens of b
    assert [(e.seq, e.num_new) for e in out.scheduled] == [(a, 3), (b, 3)]
    _advance(s, out)
    c = _seq(2)
    s.add(c)
    out = s.schedule()  # a decodes first, then b continues; c waits for budget
    assert [(e.seq, e.num_new) for e in out.scheduled] == [(a, 1), (b, 5)]
    _advance(s, out)
    out = s.schedule()
    assert [(e.seq, e.num_new) for e in out.scheduled] == [(a, 1), (b, 2), (c, 2)]


def test_max_num_seqs_and_slots_limit_admission():
    s = _make(num_slots=2, max_num_seqs=4, budget=64)
    seqs = [_seq(2) for _ in range(4)]
    for q in seqs:
        s.add(q)
    out = s.schedule()
    assert [e.seq for e in out.scheduled] == seqs[:2]
    assert s.max_num_seqs == 2 and len(s.waiting) == 2


def test_preemption_frees_newest_and_recomputes_later():
    s = _make(num_slots=3, num_blocks=4, block_size=4, budget=64)
    a, b = _seq(4), _seq(4)
    s.add(a)
    s.add(b)
    _advance(s, s.schedule())  # both prefilled, 1 page each, 1 token sampled each
    _advance(s, s.schedule())  # decode: positions 4 -> second page each (4 pages used)
    assert s.cache.blocks.num_free == 0
    for _ in range(3):
        _advance(s, s.schedule())  # positions 5..7: still within the second pages
    out = s.schedule()  # both need a third page: b (newest) is preempted
    assert out.preempted == [b] and b.status is SeqStatus.WAITING
    assert b.slot is None and b.blocks == [] and b.num_computed == 0
    assert [e.seq for e in out.scheduled] == [a]
    s.cache.check_integrity([a, b])
    _advance(s, out)
    s.finish(a)  # frees its pages: b is readmitted and recomputes prompt + outputs in one chunk
    out = s.schedule()
    assert [(e.seq, e.num_new, e.sample) for e in out.scheduled] == [(b, b.num_tokens, True)]


def test_finish_waiting_and_running_frees_cache():
    s = _make()
    a, b = _seq(5), _seq(5)
    s.add(a)
    s.add(b)
    s.max_num_seqs = 1
    _advance(s, s.schedule())
    assert a.status is SeqStatus.RUNNING and b.status is SeqStatus.WAITING
    s.finish(a)
    s.finish(b)
    assert not s.has_work() and s.cache.blocks.num_used == 0 and s.cache.slots.num_used == 0
    s.cache.check_integrity([])


def test_schedule_decodes_takes_pages_for_all_or_none():
    """The overlap path's decode rows for sequences whose last token is in flight (not yet appended)."""
    s = _make(num_blocks=3, block_size=4)
    a, b = _seq(4), _seq(3)
    s.add(a)
    s.add(b)
    s.on_step_done(s.schedule())  # both prefilled, their first token in flight: nothing uncomputed
    assert a.num_uncomputed == b.num_uncomputed == 0 and len(a.blocks) == len(b.blocks) == 1
    rows = [ScheduledSeq(a, 1, True), ScheduledSeq(b, 1, True)]
    out = s.schedule_decodes(rows)  # a needs its 2nd page (position 4), b fits its first
    assert out.scheduled == rows
    assert len(a.blocks) == 2 and len(b.blocks) == 1
    s.on_step_done(out)
    a.output_ids.append(7)  # the first step's tokens arrive
    b.output_ids.append(7)
    b.output_ids.append(7)  # b's next step needs position 5 -> its 2nd page; a needs none; 0 free
    b.num_computed += 1
    c = _seq(2)
    s.add(c)
    assert not s.could_admit()  # no page left for c
    assert s.schedule_decodes(rows) is None and len(b.blocks) == 1
    s.cache.check_integrity([a, b])
