"""Sampler pieces on hand-made logits (CPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from deltaserve.engine.sampler import SamplingBatch, sample
from deltaserve.engine.sampling_params import SamplingParams

V = 32


def _seqs(params: list[SamplingParams], outputs=None, prompts=None, seeds=None):
    out = []
    for i, p in enumerate(params):
        gen = None
        if seeds is not None and seeds[i] is not None:
            gen = torch.Generator().manual_seed(seeds[i])
        out.append(
            SimpleNamespace(
                params=p,
                prompt_ids=(prompts or [[1, 2]] * len(params))[i],
                output_ids=(outputs or [[]] * len(params))[i],
                generator=gen,
            )
        )
    return out


def _draw(logits, params, **kw):
    seqs = _seqs(params, **kw)
    return sample(logits, SamplingBatch.build(seqs, V, torch.device("cpu"), eos_ids=(0,)))


def test_greedy_fast_path_is_argmax():
    logits = torch.randn(5, V)
    b = SamplingBatch.build(_seqs([SamplingParams(temperature=0)] * 5), V, torch.device("cpu"), (0,))
    assert b.all_greedy and b.temperature is None
    assert torch.equal(sample(logits, b).token_ids, logits.argmax(-1))


@pytest.mark.parametrize(
    "other, plain",
    [
        (SamplingParams(temperature=0), True),
        (SamplingParams(temperature=0, max_tokens=3, stop=["x"], seed=4), True),
        (SamplingParams(temperature=0.5), False),
        (SamplingParams(temperature=0, repetition_penalty=1.2), False),
        (SamplingParams(temperature=0, presence_penalty=0.5), False),
        (SamplingParams(temperature=0, frequency_penalty=0.5), False),
        (SamplingParams(temperature=0, min_tokens=5), False),  # eos banned this step
        (SamplingParams(temperature=0, logprobs=0), False),
    ],
)
def test_plain_greedy_means_sample_is_the_raw_argmax(other, plain):
    """The decode graph's in-graph argmax stands in for `sample` exactly when `plain_greedy` holds."""
    torch.manual_seed(0)
    logits = torch.randn(2, V)
    logits[:, 0] = 9.0  # eos on top: a min_tokens ban or penalty changes the token
    seqs = _seqs([SamplingParams(temperature=0), other], outputs=[[0, 0], [0, 0]])
    b = SamplingBatch.build(seqs, V, torch.device("cpu"), eos_ids=(0,))
    assert b.plain_greedy is plain
    if plain:
        assert torch.equal(sample(logits, b).token_ids, logits.argmax(-1))


def test_top_k_1_top_p_tiny_and_min_p_1_are_greedy():
    logits = torch.randn(6, V)
    params = [
        SamplingParams(temperature=1.0, top_k=1),
        SamplingParams(temperature=1.5, top_p=1e-6),
        SamplingParams(temperature=2.0, min_p=1.0),
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0, top_k=1, top_p=0.5),
        SamplingParams(temperature=0.7, top_k=1, min_p=0.3),
    ]
    for _ in range(5):
        assert torch.equal(_draw(logits, params).token_ids, logits.argmax(-1))


def test_top_k_restricts_support_and_frequencies_follow_softmax():
    torch.manual_seed(0)
    row = torch.randn(V)
    logits = row.expand(4000, V).contiguous()
    toks = _draw(logits, [SamplingParams(temperature=1.0, top_k=4)] * 4000).token_ids
    top4 = set(row.topk(4).indices.tolist())
    assert set(toks.tolist()) <= top4
    probs = row[list(top4)].softmax(-1)
    freq = torch.tensor([(toks == t).float().mean() for t in list(top4)])
    assert torch.allclose(freq, probs, atol=0.04)


def test_top_p_keeps_the_smallest_set_reaching_p():
    row = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05] + [1e-9] * (V - 4)))
    logits = row.expand(2000, V).contiguous()
    toks = _draw(logits, [SamplingParams(temperature=1.0, top_p=0.7)] * 2000).token_ids
    assert set(toks.tolist()) == {0, 1}


def test_penalties_move_the_argmax():
    logits = torch.zeros(3, V)
    logits[:, 5] = 2.0
    logits[:, 6] = 1.9
    p_rep = SamplingParams(temperature=0, repetition_penalty=1.2)
    p_freq = SamplingParams(temperature=0, frequency_penalty=0.2)
    p_none = SamplingParams(temperature=0)
    out = _draw(logits, [p_rep, p_freq, p_none], prompts=[[5], [1], [5]], outputs=[[], [5], [5]]).token_ids
    assert out.tolist() == [6, 6, 5]  # repetition sees the prompt; frequency only outputs


def test_min_tokens_bans_eos_and_stop_ids():
    logits = torch.zeros(2, V)
    logits[:, 0] = 5.0  # eos
    logits[:, 3] = 4.0  # a stop token id
    p = SamplingParams(temperature=0, min_tokens=2, stop_token_ids=[3])
    out = _draw(logits, [p, p], outputs=[[9], [9, 9]]).token_ids
    assert out.tolist() == [1, 0]  # row 0 still under min_tokens: eos and 3 banned


def test_in_flight_tokens_count_like_host_tokens():
    """Overlap scheduling: a row's newest token may still be on the device (`in_flight`); the
    penalties and min_tokens bans must treat it exactly as if it were in `output_ids`."""
    logits = torch.zeros(4, V)
    logits[:, 5] = 2.0
    logits[:, 6] = 1.9
    logits[:, 0] = 1.95  # eos, banned while under min_tokens
    logits[3, 0] = 2.5  # row 3: eos is the argmax once allowed
    params = [
        SamplingParams(temperature=0, repetition_penalty=1.2),
        SamplingParams(temperature=0, frequency_penalty=0.2),
        SamplingParams(temperature=0, presence_penalty=0.2, min_tokens=2),
        SamplingParams(temperature=0, min_tokens=2),
    ]
    dev = torch.device("cpu")
    host = [[7, 5], [7, 5], [7, 5], [7, 9]]
    want = sample(logits, SamplingBatch.build(_seqs(params, outputs=host), V, dev, (0,))).token_ids
    seqs = _seqs(params, outputs=[h[:-1] for h in host])  # the last token not on the host yet
    in_flight = torch.tensor([h[-1] for h in host])
    got = sample(logits, SamplingBatch.build(seqs, V, dev, (0,), in_flight=in_flight)).token_ids
    assert got.tolist() == want.tolist() == [0, 0, 0, 0]  # 5 penalised / eos allowed at 2 tokens
    without = sample(logits, SamplingBatch.build(seqs, V, dev, (0,))).token_ids
    assert without.tolist() == [5, 5, 5, 5]  # what ignoring the token in flight would sample


def test_seeded_rows_reproducible_across_batch_compositions():
    torch.manual_seed(1)
    row = torch.randn(V)
    seeded = SamplingParams(temperature=1.0, seed=123)

    def run(batch_size: int, position: int) -> int:
        logits = torch.randn(batch_size, V)
        logits[position] = row
        params = [SamplingParams(temperature=1.0)] * batch_size
        params[position] = seeded
        seeds = [None] * batch_size
        seeds[position] = 123
        return _draw(logits, params, seeds=seeds).token_ids[position].item()

    first = [run(1, 0) for _ in range(3)]  # fresh generator each call: same token every time
    assert len(set(first)) == 1
    assert run(5, 3) == first[0] and run(9, 0) == first[0]


def test_logprobs_and_rank():
    logits = torch.randn(3, V)
    params = [
        SamplingParams(temperature=0, logprobs=3),
        SamplingParams(temperature=0),
        SamplingParams(temperature=0, logprobs=0),
    ]
    out = _draw(logits, params)
    lp = logits.log_softmax(-1)
    assert torch.allclose(out.sampled_logprob, lp.max(-1).values)
    assert out.sampled_rank.tolist() == [1, 1, 1]
    assert out.top_ids.shape == (3, 3) and torch.equal(out.top_ids[:, 0], logits.argmax(-1))


@pytest.mark.parametrize("bad", [dict(top_p=0.0), dict(temperature=-1.0), dict(top_k=-2), dict(logprobs=50)])
def test_params_validation_names_the_field(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        SamplingParams(**bad).validate()


def test_build_reusing_the_previous_batch_equals_a_fresh_build():
    """`prev` (same sequences, same order) keeps the parameter tensors but rebuilds the per-step
    parts: penalties see the new output ids and min_tokens bans lift once enough tokens exist."""
    params = [
        SamplingParams(temperature=0.8, top_k=5, top_p=0.9, repetition_penalty=1.3, min_tokens=2),
        SamplingParams(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.3, stop_token_ids=[3]),
        SamplingParams(temperature=1.2, min_p=0.1, seed=7),
    ]
    seqs = _seqs(params, outputs=[[], [], []], prompts=[[1, 2], [4], [5, 6, 7]], seeds=[None, None, 7])
    for s in seqs:
        s.output_ids = []  # own lists (the helper shares one default)
    dev = torch.device("cpu")
    prev = None
    for step in range(4):
        fresh = SamplingBatch.build(seqs, V, dev, (0,))
        reused = SamplingBatch.build(seqs, V, dev, (0,), prev)
        if prev is not None:
            assert reused.temperature is prev.temperature  # not rebuilt
        for name in ("temperature", "top_k", "top_p", "min_p", "repetition", "presence", "frequency",
                     "seen_ids", "output_ids", "ban_rows", "ban_cols", "greedy"):  # fmt: skip
            a, b = getattr(fresh, name), getattr(reused, name)
            assert (a is None) == (b is None), name
            if a is not None:
                assert torch.equal(a, b), (name, step)
        assert reused.generators == fresh.generators and reused.all_greedy == fresh.all_greedy
        assert (fresh.ban_rows is not None) == (step < 2)  # row 0 has min_tokens=2 (eos 0 banned)
        for i, s in enumerate(seqs):
            s.output_ids.append(8 + step + i)
        prev = reused
    other = _seqs(params)  # other sequence objects: nothing is reused
    assert SamplingBatch.build(other, V, dev, (0,), prev).temperature is not prev.temperature
