"""Overlap scheduling: step N+1 is launched before step N is processed, and nothing observable changes.

Every test runs the same workload on an engine with `overlap_schedule=True` and one with it off and
requires identical outputs (tokens, text, finish and stop reasons, logprobs), a clean cache after,
and (where the steady state exists) that the overlap path was actually taken.
"""

from __future__ import annotations

import random

import pytest

from deltaserve.engine.cache import CacheSpec
from deltaserve.engine.sampling_params import SamplingParams

MODEL = "qwen3.5-dense-a"


def _prompts(n: int, seed: int = 0, lengths=(3, 5, 8, 13)) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 450) for _ in range(rng.choice(lengths))] for _ in range(n)]


def _run(engine, work, *, abort_at: dict[int, list[int]] | None = None) -> dict[int, object]:
    """`work`: (prompt, params, arrival step) per request; drive to completion, return final outputs.

    Also checks on every step that a pending step keeps `has_unfinished_requests()` true and that an
    aborted request never gets another output."""
    done: dict[int, object] = {}
    aborted: set[int] = set()
    todo = sorted(range(len(work)), key=lambda i: work[i][2])
    step = 0
    while todo or engine.has_unfinished_requests():
        while todo and work[todo[0]][2] <= step:
            i = todo.pop(0)
            engine.add_request(str(i), {"prompt_token_ids": work[i][0]}, work[i][1])
        for i in (abort_at or {}).get(step, []):
            out = engine.abort_request(str(i))
            if out is not None:
                done[i] = out
                aborted.add(i)
        for out in engine.step():
            i = int(out.request_id)
            assert i not in aborted, f"request {i} got an output after its abort"
            if out.finished:
                done[i] = out
        if engine._pending is not None:
            assert engine.has_unfinished_requests()
        step += 1
        assert step < 2000, "engine did not finish"
    engine.check_integrity()
    assert engine.cache.blocks.num_used == 0 and engine.cache.slots.num_used == 0
    return done


def _view(out) -> list[tuple]:
    """The comparable content of a final `RequestOutput` (logprobs rounded: batch order may differ)."""
    rows = []
    for c in out.outputs:
        lps = None
        if c.logprobs is not None:
            lps = [{t: (round(e.logprob, 4), e.rank) for t, e in entry.items()} for entry in c.logprobs]
        rows.append((c.index, c.token_ids, c.text, c.finish_reason, c.stop_reason, lps))
    return rows


def _compare(on, off, work, **kw) -> tuple[dict, dict]:
    got, want = _run(on, work, **kw), _run(off, work, **kw)
    assert sorted(got) == sorted(want) == list(range(len(work)))
    for i in range(len(work)):
        assert _view(got[i]) == _view(want[i]), f"request {i}: overlap on != off"
    assert off.num_overlapped_steps == 0
    return got, want


@pytest.fixture(scope="module")
def engines(tiny_checkpoint, make_engine):
    path = tiny_checkpoint(MODEL)
    on = make_engine(path)
    off = make_engine(path, overlap_schedule=False)
    assert on.config.overlap_schedule and not off.config.overlap_schedule
    return on, off


def _greedy(max_tokens: int | None, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kw)


def test_steady_greedy_batch_overlaps_every_decode_step(engines):
    on, off = engines
    max_tokens = 12
    work = [(p, _greedy(max_tokens), 0) for p in _prompts(6, lengths=(8,))]  # one prefill step, then lockstep
    s_on, s_off, o_on, d_on = on.num_steps, off.num_steps, on.num_overlapped_steps, on.num_discarded_tokens
    _compare(on, off, work)
    # tokens 3..max_tokens are launched from the previous step's device tokens: the first decode step
    # follows the (processed) prefill, and the step whose token is the last by length is not continued
    assert on.num_overlapped_steps - o_on == max_tokens - 2
    assert on.num_steps - s_on == off.num_steps - s_off == max_tokens
    assert on.num_discarded_tokens == d_on  # no step is launched past a sequence's known end


def test_runs_to_max_model_len(engines):
    """`max_tokens=None`: the end is max_model_len; no step is launched past it."""
    on, off = engines
    limit = on.config.max_model_len
    work = [(p, _greedy(None), 0) for p in _prompts(3, seed=9, lengths=(limit - 9, limit - 7))]
    o_on, d_on = on.num_overlapped_steps, on.num_discarded_tokens
    got, _ = _compare(on, off, work)
    assert all(len(p) + len(got[i].outputs[0].token_ids) == limit for i, (p, _, _) in enumerate(work))
    assert on.num_overlapped_steps > o_on and on.num_discarded_tokens == d_on


def test_mixed_features_equal_overlap_off(engines):
    on, off = engines
    prompts = _prompts(14, seed=1)
    base = _run(off, [(p, _greedy(14), 0) for p in prompts])
    tok = on.tokenizer
    text_prompt = tok.encode("the quick brown fox", add_special_tokens=False)
    text = _run(off, [(text_prompt, _greedy(24), 0)])[0].outputs[0].text
    assert len(text) >= 8
    stop_str = text[len(text) // 2 : len(text) // 2 + 2]
    params = [
        _greedy(14),
        SamplingParams(temperature=0.8, top_p=0.9, seed=11, max_tokens=13, ignore_eos=True),
        _greedy(14, stop_token_ids=[base[2].outputs[0].token_ids[5]]),  # stops mid-batch
        _greedy(14, stop_token_ids=[base[3].outputs[0].token_ids[2]], min_tokens=4),
        SamplingParams(temperature=0.7, top_k=20, seed=3, n=2, max_tokens=9, ignore_eos=True),
        _greedy(6, logprobs=2),
        _greedy(10, repetition_penalty=1.3),
        SamplingParams(temperature=1.0, seed=5, presence_penalty=0.5, max_tokens=8, ignore_eos=True),
        _greedy(1),
        _greedy(2),
        _greedy(12, min_tokens=7),
        SamplingParams(temperature=0.0, max_tokens=14),  # the model's own eos applies
        _greedy(14, prompt_logprobs=1),
        _greedy(20, stop=[stop_str]),
    ]
    work = [(p, sp, i // 3) for i, (p, sp) in enumerate(zip(prompts, params))]
    work[-1] = (text_prompt, params[-1], 1)
    o_on = on.num_overlapped_steps
    got, _ = _compare(on, off, work)
    assert on.num_overlapped_steps > o_on
    assert got[2].outputs[0].finish_reason == "stop" and len(got[2].outputs[0].token_ids) <= 6
    assert got[13].outputs[0].finish_reason == "stop" and got[13].outputs[0].stop_reason == stop_str


def test_logprobs_overlap(engines):
    on, off = engines
    max_tokens = 8
    work = [(p, _greedy(max_tokens, logprobs=3), 0) for p in _prompts(4, seed=5, lengths=(8,))]
    o_on = on.num_overlapped_steps
    got, _ = _compare(on, off, work)
    assert on.num_overlapped_steps - o_on == max_tokens - 2
    assert all(len(got[i].outputs[0].logprobs) == max_tokens for i in range(len(work)))


@pytest.mark.parametrize(
    "params",
    [
        _greedy(12, frequency_penalty=-2.0),  # negative: pulls towards the tokens already sampled,
        _greedy(12, presence_penalty=-2.0),  # so the newest one (in flight) matters at once
        _greedy(12, repetition_penalty=2.0),
        _greedy(12, repetition_penalty=0.3),
        SamplingParams(temperature=0.9, seed=9, presence_penalty=2.0, max_tokens=12, ignore_eos=True),
    ],
    ids=["frequency", "presence", "repetition", "repetition-pull", "presence-seeded"],
)
def test_penalties_count_the_token_in_flight(engines, params):
    """Penalties see the host history plus the token still in flight (on the device): overlapped
    steps give the tokens of synchronous ones, penalties strong enough to change the greedy path."""
    on, off = engines
    prompts = _prompts(4, seed=6, lengths=(8,))
    work = [(p, params, 0) for p in prompts]
    o_on = on.num_overlapped_steps
    got, _ = _compare(on, off, work)
    assert on.num_overlapped_steps - o_on == 12 - 2
    plain = _run(off, [(p, _greedy(12), 0) for p in prompts])
    if params.temperature == 0.0:
        assert any(got[i].outputs[0].token_ids != plain[i].outputs[0].token_ids for i in range(len(work)))


def test_new_request_is_admitted_without_waiting_for_the_batch(engines):
    """A steady overlapped batch yields to a waiting request that fits: it is scheduled next step."""
    on, _ = engines
    for i, p in enumerate(_prompts(2, seed=8, lengths=(6,))):
        on.add_request(f"w{i}", {"prompt_token_ids": p}, _greedy(30))
    o_on = on.num_overlapped_steps
    while on.num_overlapped_steps < o_on + 3:
        on.step()
    new = on.add_request("late", {"prompt_token_ids": [7, 8, 9]}, _greedy(3))
    on.step()
    assert new.seqs[0].status.value == "running"
    while on.has_unfinished_requests():
        on.step()
    on.check_integrity()


def test_min_tokens_boundary(engines):
    """A stop token banned by min_tokens becomes allowed exactly when `min_tokens` tokens exist; the
    step sampling right after the boundary must see the count including the token in flight."""
    on, off = engines
    prompts = _prompts(6, seed=7, lengths=(8,))
    base = _run(off, [(p, _greedy(16), 0) for p in prompts])
    work = []
    for i, p in enumerate(prompts):
        toks = base[i].outputs[0].token_ids
        k = next(k for k in range(3 + i % 3, 16) if toks[k] not in toks[:k])  # first occurrence at k
        work.append((p, _greedy(16, stop_token_ids=[toks[k]], min_tokens=k), 0))
    got, _ = _compare(on, off, work)
    for i in range(len(work)):
        c = got[i].outputs[0]
        assert c.finish_reason == "stop" and len(c.token_ids) == work[i][1].min_tokens + 1


def test_eos_mid_batch_drops_the_token_computed_after_it(engines):
    on, off = engines
    prompts = _prompts(8, seed=2)
    base = _run(off, [(p, _greedy(16), 0) for p in prompts])
    eos = base[0].outputs[0].token_ids[6]
    saved = on.eos_ids, off.eos_ids
    on.eos_ids = off.eos_ids = (eos,)
    try:
        work = [(p, SamplingParams(temperature=0.0, max_tokens=16), 0) for p in prompts]
        d_on = on.num_discarded_tokens
        got, _ = _compare(on, off, work)
    finally:
        on.eos_ids, off.eos_ids = saved
    assert got[0].outputs[0].finish_reason == "stop" and got[0].outputs[0].token_ids[-1] == eos
    assert on.num_discarded_tokens > d_on  # it had been computed once more in the step in flight
    assert off.num_discarded_tokens == 0


def test_abort_while_a_step_is_pending(engines):
    on, off = engines
    prompts = _prompts(6, seed=3, lengths=(6,))
    expected = _run(off, [(p, _greedy(16), 0) for p in prompts])
    work = [(p, _greedy(16), 0) for p in prompts]
    for i, p in enumerate(prompts):
        on.add_request(f"a{i}", {"prompt_token_ids": p}, _greedy(16))
    outs = {}
    while on._pending is None or on.num_overlapped_steps == 0:
        for out in on.step():
            outs[out.request_id] = out
    assert on.abort_request("a1").outputs[0].finish_reason == "abort"
    assert on.abort_request("a4").outputs[0].finish_reason == "abort"
    while on.has_unfinished_requests():
        for out in on.step():
            assert out.request_id not in ("a1", "a4")
            outs[out.request_id] = out
    on.check_integrity()
    assert on.cache.blocks.num_used == 0 and on.cache.slots.num_used == 0
    for i in (0, 2, 3, 5):
        assert outs[f"a{i}"].outputs[0].token_ids == expected[i].outputs[0].token_ids
    # aborting every request while a step is pending: the next step only processes it
    done = _run(on, work, abort_at={4: list(range(6))})
    assert all(done[i].outputs[0].finish_reason == "abort" for i in range(6))
    for i in range(6):
        toks = done[i].outputs[0].token_ids
        assert toks == expected[i].outputs[0].token_ids[: len(toks)]


def test_pending_step_is_processed_when_nothing_else_runs(engines):
    on, _ = engines
    on.add_request("p", {"prompt_token_ids": [5, 6, 7, 8]}, _greedy(5))
    n_outputs = 0
    while on._pending is None:
        n_outputs += len(on.step())
    assert on.has_unfinished_requests()
    while on.has_unfinished_requests():
        outs = on.step()
        n_outputs += len(outs)
    assert outs and outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 5
    assert n_outputs == 5  # one cumulative output per processed step
    assert on.flush() == [] and on._pending is None


def test_preemption_under_tiny_cache(tiny_checkpoint, make_engine):
    path = tiny_checkpoint(MODEL)
    probe = make_engine(path)
    spec = CacheSpec.for_model(probe.model_config, block_size=16, dtype="float32", ssm_dtype="float32")
    budget = 8 * spec.slot_bytes + 12 * spec.block_bytes  # 8 running sequences but only 12 KV pages
    kw = dict(cpu_cache_bytes=budget, max_model_len=64)
    on, off = make_engine(path, **kw), make_engine(path, overlap_schedule=False, **kw)
    assert on.cache.blocks.size == 12
    rng = random.Random(4)
    work = [
        (
            [rng.randrange(3, 450) for _ in range(rng.choice([5, 9, 17, 31]))],
            _greedy(rng.randint(4, 14)),
            i // 3,
        )
        for i in range(20)
    ]
    _compare(on, off, work)
    assert on.stats()["num_preemptions_total"] > 0 and off.stats()["num_preemptions_total"] > 0
    assert on.num_overlapped_steps > 0


@pytest.mark.gpu
def test_overlap_equals_sync_with_cuda_graphs(tiny_checkpoint):
    """On the GPU (CUDA-graph decode, device-to-device input ids, pinned async copies): overlap on
    equals off for greedy and seeded sampling, and the overlap path is taken."""
    import gc

    import torch

    from deltaserve.config import EngineConfig
    from deltaserve.engine.core import LLMEngine
    from deltaserve.testing import resolve_spec

    spec = resolve_spec(MODEL).replace(linear_key_head_dim=64, linear_value_head_dim=64)
    path = tiny_checkpoint(spec)
    prompts = [[5 + i, 17, 300 - i, 42] * (1 + i % 4) for i in range(16)]
    seeded = SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=16, ignore_eos=True)
    work = [(p, _greedy(24) if i % 2 else seeded, i // 8) for i, p in enumerate(prompts)]
    results = []
    for overlap in (True, False):
        engine = LLMEngine(
            EngineConfig.create(
                path,
                device="cuda",
                dtype="bfloat16",
                max_model_len=256,
                max_num_seqs=16,
                max_num_batched_tokens=512,
                gpu_memory_utilization=0.5,
                overlap_schedule=overlap,
            )
        )
        assert engine.runner.graphs is not None, engine.runner.graph_error
        done = _run(engine, work)
        # the same steps in both modes (no finish by EOS: nothing is discarded), so the same kernels run
        # on the same shapes and bf16 results can be compared exactly
        results.append(([_view(done[i]) for i in range(len(work))], engine.num_steps))
        assert engine.num_discarded_tokens == 0
        if overlap:
            assert engine.num_overlapped_steps > 0 and engine.runner.graphs.num_replays > 0
        del engine
        gc.collect()
        torch.cuda.empty_cache()
    assert results[0] == results[1]
