"""Engine-level request features on a tiny checkpoint: seeds, stops, eos, lengths, logprobs, errors."""

from __future__ import annotations

import math

import pytest

from deltaserve.engine.sampling_params import SamplingParams

PROMPT = [11, 42, 97, 300, 5, 61, 250, 18]


@pytest.fixture(scope="module")
def engine(tiny_checkpoint, make_engine):
    return make_engine(tiny_checkpoint("qwen3.5-dense-a"))


def _gen(engine, prompts_params: list[tuple[object, SamplingParams]]):
    base = engine.num_steps
    ids = [f"r{base}-{i}" for i in range(len(prompts_params))]
    for rid, (prompt, params) in zip(ids, prompts_params):
        engine.add_request(rid, prompt, params)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    engine.check_integrity()
    return [done[rid] for rid in ids]


def test_seeded_sampling_reproducible_across_runs_and_batches(engine):
    p = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=12, ignore_eos=True)
    alone = _gen(engine, [(PROMPT, p)])[0].outputs[0].token_ids
    again = _gen(engine, [(PROMPT, p)])[0].outputs[0].token_ids
    noise = SamplingParams(temperature=1.0, max_tokens=9, ignore_eos=True)
    crowd = [([3 + i, 7, 9 + i], noise) for i in range(6)]
    mixed = _gen(engine, crowd[:3] + [(PROMPT, p)] + crowd[3:])[3].outputs[0].token_ids
    assert alone == again == mixed
    other = SamplingParams(temperature=1.0, top_p=0.9, seed=99, max_tokens=12, ignore_eos=True)
    assert _gen(engine, [(PROMPT, other)])[0].outputs[0].token_ids != alone


def test_n_continuations(engine):
    greedy = _gen(engine, [(PROMPT, SamplingParams(temperature=0, n=3, max_tokens=6, ignore_eos=True))])[0]
    assert [c.index for c in greedy.outputs] == [0, 1, 2]
    assert greedy.outputs[0].token_ids == greedy.outputs[1].token_ids == greedy.outputs[2].token_ids
    p = SamplingParams(temperature=1.0, n=2, seed=5, max_tokens=10, ignore_eos=True)
    a, b = _gen(engine, [(PROMPT, p)])[0], _gen(engine, [(PROMPT, p)])[0]
    assert [c.token_ids for c in a.outputs] == [c.token_ids for c in b.outputs]
    assert a.outputs[0].token_ids != a.outputs[1].token_ids


def test_stop_token_ids_eos_ignore_eos_and_min_tokens(engine):
    base = _gen(engine, [(PROMPT, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))])[0]
    toks = base.outputs[0].token_ids
    stop_tok = toks[3]
    first = toks.index(stop_tok)
    out = _gen(engine, [(PROMPT, SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[stop_tok]))])[0]
    c = out.outputs[0]
    assert c.token_ids == toks[: first + 1] and c.finish_reason == "stop" and c.stop_reason == stop_tok
    saved = engine.eos_ids
    engine.eos_ids = (stop_tok,)
    try:
        c = _gen(engine, [(PROMPT, SamplingParams(temperature=0, max_tokens=10))])[0].outputs[0]
        assert c.token_ids == toks[: first + 1] and c.finish_reason == "stop" and c.stop_reason is None
        c = _gen(engine, [(PROMPT, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))])[
            0
        ].outputs[0]
        assert c.token_ids == toks and c.finish_reason == "length"
        c = _gen(engine, [(PROMPT, SamplingParams(temperature=0, max_tokens=10, min_tokens=first + 2))])[
            0
        ].outputs[0]
        assert len(c.token_ids) >= first + 2 and stop_tok not in c.token_ids[: first + 2]
    finally:
        engine.eos_ids = saved


def test_stop_string_spanning_tokens(engine):
    tok = engine.tokenizer
    prompt = tok.encode("the quick brown fox", add_special_tokens=False)
    base = _gen(engine, [(prompt, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))])[0].outputs[
        0
    ]
    text = base.text
    assert len(text) >= 8, "need some decodable text to pick a stop string from"
    # a stop string straddling a token boundary: the last 2 chars of token j's text + 2 chars after
    prefix_lens = [len(tok.decode(base.token_ids[:j])) for j in range(1, len(base.token_ids))]
    cut = next(n for n in prefix_lens if 3 <= n <= len(text) - 3)
    stop = text[cut - 2 : cut + 2]
    idx = text.find(stop)
    out = _gen(engine, [(prompt, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop]))])
    c = out[0].outputs[0]
    assert c.finish_reason == "stop" and c.stop_reason == stop
    assert c.text == text[:idx]
    inc = SamplingParams(
        temperature=0, max_tokens=24, ignore_eos=True, stop=[stop], include_stop_str_in_output=True
    )
    assert _gen(engine, [(prompt, inc)])[0].outputs[0].text == text[: idx + len(stop)]


def test_max_tokens_none_runs_to_max_model_len(engine):
    prompt = list(range(3, 3 + engine.config.max_model_len - 5))
    c = _gen(engine, [(prompt, SamplingParams(temperature=0, max_tokens=None, ignore_eos=True))])[0].outputs[
        0
    ]
    assert len(c.token_ids) == 5 and c.finish_reason == "length"


def test_logprobs(engine):
    p = SamplingParams(temperature=0, max_tokens=5, logprobs=2, ignore_eos=True)
    c = _gen(engine, [(PROMPT, p)])[0].outputs[0]
    assert len(c.logprobs) == 5
    total = 0.0
    for tok, entry in zip(c.token_ids, c.logprobs):
        assert tok in entry and entry[tok].rank == 1 and 2 <= len(entry) <= 3
        assert all(lp.logprob <= 0 for lp in entry.values())
        total += entry[tok].logprob
    assert math.isclose(c.cumulative_logprob, total, rel_tol=1e-6)


def test_request_validation(engine):
    limit = engine.config.max_model_len
    with pytest.raises(ValueError, match="longer than max_model_len"):
        engine.make_request("x", list(range(3, 3 + limit + 1)), SamplingParams())
    with pytest.raises(ValueError, match="empty"):
        engine.make_request("x", [], SamplingParams())
    with pytest.raises(ValueError, match="token ids"):
        engine.make_request("x", [1, 10**6], SamplingParams())
    with pytest.raises(ValueError, match="max_tokens"):
        engine.make_request("x", [1, 2], SamplingParams(max_tokens=0))
    with pytest.raises(ValueError, match="prompt"):
        engine.make_request("x", 3.5, SamplingParams())
    assert not engine.has_unfinished_requests()


def test_streamed_outputs_share_one_prompt_copy(engine):
    """Every output of a request hands out the same prompt list (copied once, not per step) and the
    same finished prompt logprobs; changing them does not reach the engine or other requests."""
    p = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, prompt_logprobs=1)
    rid = f"share-{engine.num_steps}"
    req = engine.add_request(rid, PROMPT, p)
    outs = []
    while engine.has_unfinished_requests():
        outs += [o for o in engine.step() if o.request_id == rid]
    assert len(outs) >= 3 and outs[-1].finished
    first = outs[0].prompt_token_ids
    assert first == PROMPT and first is not req.prompt_ids
    assert all(o.prompt_token_ids is first for o in outs)
    assert all(o.prompt_logprobs is outs[0].prompt_logprobs for o in outs)
    assert len(outs[0].prompt_logprobs) == len(PROMPT)
    first.append(-1)  # a consumer's edit stays in its own copy
    assert req.prompt_ids == PROMPT
    again = _gen(engine, [(PROMPT, p)])[0]
    assert again.prompt_token_ids == PROMPT and again.outputs[0].token_ids == outs[-1].outputs[0].token_ids
