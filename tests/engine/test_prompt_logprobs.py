"""Prompt logprobs equal the log-softmax of transformers' fp32 logits at every prompt position.

Covers chunked prefill (prompts longer than the token budget), batches mixing requests with and
without prompt logprobs, n > 1 and preemption by recompute (which must not append entries twice).
"""

from __future__ import annotations

import random

import pytest
import torch

from deltaserve.engine.cache import CacheSpec
from deltaserve.engine.sampling_params import SamplingParams
from deltaserve.testing import cached_checkpoint, load_hf_model

ATOL = 2e-4


@pytest.fixture(scope="module")
def setup():
    path = cached_checkpoint("qwen3-next-a")
    return path, load_hf_model(path)


def _prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 450) for _ in range(n)] for n in lengths]


def _hf_logprobs(hf, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = hf(torch.tensor([prompt])).logits[0].float()  # [P, V]
    return logits.log_softmax(dim=-1)  # [P, V]


def _run(engine, prompts: list[list[int]], params: list[SamplingParams]) -> list:
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add_request(str(i), {"prompt_token_ids": p}, sp)
    done = {}
    for _ in range(2000):
        if not engine.has_unfinished_requests():
            break
        for out in engine.step():
            if out.finished:
                done[int(out.request_id)] = out
    assert not engine.has_unfinished_requests()
    return [done[i] for i in range(len(prompts))]


def _check(hf, prompt: list[int], entries, k: int) -> None:
    lp = _hf_logprobs(hf, prompt)  # [P, V]
    assert entries is not None and len(entries) == len(prompt)
    assert entries[0] is None
    for pos in range(1, len(prompt)):
        row = lp[pos - 1]  # [V] distribution of token `pos`
        entry = entries[pos]
        tok = prompt[pos]
        assert entry[tok].logprob == pytest.approx(row[tok].item(), abs=ATOL), f"position {pos}"
        # ranks: ties within the tolerance may order either way
        above, above_or_tied = int((row > row[tok] + ATOL).sum()), int((row > row[tok] - ATOL).sum())
        assert above + 1 <= entry[tok].rank <= above_or_tied + 1, f"position {pos}: rank"
        assert entry[tok].decoded_token is not None
        top = {tid: e for tid, e in entry.items() if tid != tok or (e.rank or 0) <= k}
        got = sorted((e.logprob for tid, e in top.items() if (e.rank or k + 1) <= k), reverse=True)
        want = row.topk(k).values.tolist()  # [k]
        assert got == pytest.approx(want[: len(got)], abs=ATOL), f"position {pos}: top-{k}"
        assert len(got) == k or (len(got) == k - 1 and entry[tok].rank <= k)
        for tid, e in entry.items():
            assert e.logprob == pytest.approx(row[tid].item(), abs=ATOL)
        assert len(entry) <= k + 1


def test_prompt_logprobs_match_hf_with_chunked_prefill_and_mixed_batch(setup, make_engine):
    path, hf = setup
    engine = make_engine(path, max_num_batched_tokens=16)
    prompts = _prompts([40, 1, 9, 23, 17])  # 40, 23 and 17 are prefilled in several chunks
    wants = [3, 0, None, 2, None]
    params = [
        SamplingParams(temperature=0.0, max_tokens=1 + i % 3, ignore_eos=True, prompt_logprobs=k)
        for i, k in enumerate(wants)
    ]
    outs = _run(engine, prompts, params)
    for p, k, out in zip(prompts, wants, outs):
        if k is None:
            assert out.prompt_logprobs is None
        else:
            _check(hf, p, out.prompt_logprobs, k)
    # the requests without prompt logprobs generate exactly what they generate alone
    solo = _run(make_engine(path, max_num_batched_tokens=16), [prompts[2]], [params[2]])
    assert solo[0].outputs[0].token_ids == outs[2].outputs[0].token_ids
    engine.check_integrity()


def test_prompt_logprobs_with_n_and_generation_logprobs(setup, make_engine):
    path, hf = setup
    engine = make_engine(path)
    prompt = _prompts([12], seed=1)[0]
    sp = SamplingParams(n=2, temperature=1.0, seed=3, max_tokens=2, logprobs=1, prompt_logprobs=1)
    (out,) = _run(engine, [prompt], [sp])
    _check(hf, prompt, out.prompt_logprobs, 1)
    assert all(len(c.logprobs) == len(c.token_ids) for c in out.outputs)


def test_preemption_does_not_duplicate_prompt_logprobs(setup, make_engine):
    path, hf = setup
    probe = make_engine(path)
    spec = CacheSpec.for_model(probe.model_config, block_size=16, dtype="float32", ssm_dtype="float32")
    budget = 4 * spec.slot_bytes + 6 * spec.block_bytes  # 4 running sequences, 6 KV pages
    engine = make_engine(path, cpu_cache_bytes=budget, max_model_len=64, max_num_batched_tokens=16)
    prompts = _prompts([20, 18, 25, 9], seed=2)
    params = [SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, prompt_logprobs=2)] * 4
    outs = _run(engine, prompts, params)
    assert engine.stats()["num_preemptions_total"] > 0
    for p, out in zip(prompts, outs):
        _check(hf, p, out.prompt_logprobs, 2)
    engine.check_integrity()


def test_prompt_logprobs_validation():
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=21).validate()
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=-1).validate()
    assert SamplingParams(prompt_logprobs=0).validate().prompt_logprobs == 0
