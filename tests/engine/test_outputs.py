"""`GrowingPrefix` (the running outputs' views of append-only lists) and what the engine hands out."""

from __future__ import annotations

import json

import pytest

from deltaserve.engine.outputs import GrowingPrefix
from deltaserve.engine.sampling_params import SamplingParams


def test_growing_prefix_reads_like_a_frozen_list():
    items = [5, 6, 7]
    v = GrowingPrefix(items)
    items.append(8)  # the list grows; the view keeps its length
    assert len(v) == 3 and list(v) == [5, 6, 7] and v == [5, 6, 7] and v == (5, 6, 7)
    assert v != [5, 6, 7, 8] and v != [5, 6] and v != [5, 6, 9]
    assert v == GrowingPrefix(items, 3) and v != GrowingPrefix(items)
    assert (v[0], v[-1], v[1:], v[::-1], v[-2:], v[5:]) == (5, 7, [6, 7], [7, 6, 5], [6, 7], [])
    with pytest.raises(IndexError):
        v[3]
    with pytest.raises(IndexError):
        v[-4]
    assert [1] + v == [1, 5, 6, 7] and v + [9] == [5, 6, 7, 9] and v + v == [5, 6, 7] * 2
    assert repr(v) == "[5, 6, 7]" and 6 in v and 8 not in v and v.index(7) == 2 and v.count(5) == 1
    assert not GrowingPrefix([]) and bool(v)
    with pytest.raises(TypeError):
        hash(v)


def test_running_outputs_are_views_finished_outputs_are_lists(tiny_checkpoint, make_engine):
    engine = make_engine(tiny_checkpoint("qwen3.5-dense-a"))
    p = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=1)
    engine.add_request("v", [11, 42, 97, 300], p)
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    *running, final = outs
    assert running and final.finished
    toks = final.outputs[0].token_ids
    assert type(toks) is list and type(final.outputs[0].logprobs) is list and len(toks) == 6
    json.dumps(toks)
    for o in running:  # each running output still shows exactly what it had when it was made
        c = o.outputs[0]
        assert isinstance(c.token_ids, GrowingPrefix) and len(c.token_ids) == len(c.logprobs) < 6
        assert c.token_ids == toks[: len(c.token_ids)]
    assert [len(o.outputs[0].token_ids) for o in running] == list(range(len(toks) - len(running), len(toks)))


def test_growing_prefix_slices_match_list_slices():
    import random

    rng = random.Random(0)
    bounds = [None, *range(-9, 10)]
    for _ in range(3000):
        n = rng.randrange(8)
        items = list(range(n)) + [99] * rng.randrange(3)  # appended after the view was made
        a, b, step = rng.choice(bounds), rng.choice(bounds), rng.choice([None, 1, 2, 3, -1, -2, -3])
        assert GrowingPrefix(items, n)[a:b:step] == items[:n][a:b:step], (n, a, b, step)
