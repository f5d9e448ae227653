"""Acceptance: continuous batching gives each request exactly its solo tokens and HF's greedy tokens.

24 greedy requests with different prompt lengths and max_tokens arrive over several steps; the
chunked-prefill budget is small so prefill chunks, decodes and new arrivals mix in one batch.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

from deltaserve.engine.cache import CacheSpec
from deltaserve.engine.sampling_params import SamplingParams
from deltaserve.testing import load_hf_model

NUM_REQUESTS = 24
MODELS = ["qwen3-next-a", "qwen3.5-dense-a"]


def _workload(seed: int = 0) -> list[tuple[list[int], int, int]]:
    """(prompt ids, max_tokens, arrival step) per request."""
    rng = random.Random(seed)
    out = []
    for i in range(NUM_REQUESTS):
        length = rng.choice([1, 2, 5, 9, 16, 17, 31, 40])
        prompt = [rng.randrange(3, 450) for _ in range(length)]
        out.append((prompt, rng.randint(2, 12), i // 3))  # three new requests every step
    return out


def _run(engine, work, params_of, *, abort_at: dict[int, list[int]] | None = None) -> dict[int, object]:
    """Drive the engine step by step, adding requests at their arrival step; returns final outputs."""
    done: dict[int, object] = {}
    step = 0
    pending = sorted(range(len(work)), key=lambda i: work[i][2])
    while pending or engine.has_unfinished_requests():
        while pending and work[pending[0]][2] <= step:
            i = pending.pop(0)
            engine.add_request(str(i), {"prompt_token_ids": work[i][0]}, params_of(i))
        for i in (abort_at or {}).get(step, []):
            out = engine.abort_request(str(i))
            if out is not None:
                done[i] = out
        for out in engine.step():
            if out.finished:
                done[int(out.request_id)] = out
        step += 1
        assert step < 1000, "engine did not finish"
    return done


def _greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def _hf_greedy(hf, prompt: list[int], max_tokens: int) -> list[int]:
    cfg = copy.deepcopy(hf.generation_config)
    cfg.do_sample, cfg.eos_token_id, cfg.temperature, cfg.top_k, cfg.top_p = False, None, None, None, None
    ids = torch.tensor([prompt])
    out = hf.generate(
        ids, attention_mask=torch.ones_like(ids), generation_config=cfg, max_new_tokens=max_tokens
    )
    return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="module", params=MODELS)
def setup(request, tiny_checkpoint):
    path = tiny_checkpoint(request.param)
    work = _workload()
    hf = load_hf_model(path)
    with torch.no_grad():
        expected = [_hf_greedy(hf, p, m) for p, m, _ in work]
    return path, work, expected


def test_batched_greedy_equals_solo_and_hf(setup, make_engine):
    path, work, expected = setup
    engine = make_engine(path)
    solo = {}
    for i, (prompt, max_tokens, _) in enumerate(work):
        out = _run(engine, [(prompt, max_tokens, 0)], lambda _, m=max_tokens: _greedy(m))
        solo[i] = out[0].outputs[0].token_ids
    batched = _run(engine, work, lambda i: _greedy(work[i][1]))
    for i in range(len(work)):
        out = batched[i]
        assert out.prompt_token_ids == work[i][0]
        assert out.outputs[0].finish_reason == "length"
        assert out.outputs[0].token_ids == solo[i], f"request {i}: batched != solo"
        assert out.outputs[0].token_ids == expected[i], f"request {i}: ours != transformers"
    assert engine.stats()["num_preemptions_total"] == 0
    engine.check_integrity()
    assert engine.cache.blocks.num_used == 0 and engine.cache.slots.num_used == 0


def test_preemption_under_tiny_budget_keeps_tokens(setup, make_engine):
    path, work, expected = setup
    probe = make_engine(path)
    spec = CacheSpec.for_model(probe.model_config, block_size=16, dtype="float32", ssm_dtype="float32")
    budget = 8 * spec.slot_bytes + 12 * spec.block_bytes  # 8 running sequences but only 12 KV pages
    engine = make_engine(path, cpu_cache_bytes=budget, max_model_len=64)
    assert engine.cache.blocks.size == 12 and engine.cache.slots.size == 8
    batched = _run(engine, work, lambda i: _greedy(work[i][1]))
    assert engine.stats()["num_preemptions_total"] > 0
    for i in range(len(work)):
        assert batched[i].outputs[0].token_ids == expected[i], f"request {i} after preemption"
    engine.check_integrity()
    assert engine.cache.blocks.num_used == 0 and engine.cache.slots.num_used == 0


def test_abort_half_midway_leaves_cache_clean(setup, make_engine):
    path, work, expected = setup
    engine = make_engine(path)
    aborted = list(range(0, NUM_REQUESTS, 2))
    done = _run(engine, work, lambda i: _greedy(work[i][1]), abort_at={4: aborted[:6], 6: aborted[6:]})
    engine.check_integrity()
    assert engine.cache.blocks.num_used == 0 and engine.cache.slots.num_used == 0
    for i in range(NUM_REQUESTS):
        c = done[i].outputs[0]
        if i in aborted and c.finish_reason == "abort":
            assert c.token_ids == expected[i][: len(c.token_ids)]
        else:
            assert c.token_ids == expected[i]
    assert sum(done[i].outputs[0].finish_reason == "abort" for i in aborted) >= 6
