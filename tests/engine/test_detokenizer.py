"""Incremental detokenization and stop strings against the tiny checkpoint's tokenizer."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from deltaserve.engine import detokenizer as dt
from deltaserve.engine.sampling_params import SamplingParams
from deltaserve.testing import cached_checkpoint


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(cached_checkpoint("qwen3.5-dense-a")))


def test_incremental_decode_equals_full_decode(tok):
    text = "Hello world, the quick brown fox: ünïcödé 🙂 and digits 1234!"
    prompt = tok.encode("Say:", add_special_tokens=False)
    out = tok.encode(text, add_special_tokens=False)
    for decode in (dt.fast_decoder(tok), lambda ids, skip: tok.decode(ids, skip_special_tokens=skip)):
        state = dt.new_state(len(prompt))
        got = ""
        for i in range(1, len(out) + 1):
            got += dt.decode_delta(decode, prompt + out[:i], state, skip_special_tokens=True)
        assert got == tok.decode(out) == text


def test_find_stop_spanning_tokens():
    text = "abc STO"
    assert dt.find_stop(text, 3, ["STOP"]) is None
    text += "P tail"
    assert dt.find_stop(text, 6, ["STOP", "tail"]) == ("STOP", 4)
    assert dt.find_stop("xxSTOP", 1, ["STOP"]) == ("STOP", 2)  # the match ends in the new char
    assert dt.find_stop("STOPxx", 2, ["STOP"]) is None  # already seen before: not re-reported


def test_holdback():
    assert dt.holdback(SamplingParams(stop=["abcd", "x"])) == 3
    assert dt.holdback(SamplingParams(stop=["abcd"], include_stop_str_in_output=True)) == 0
    assert dt.holdback(SamplingParams()) == 0


def _plain_delta(decode, all_ids, offsets, skip):
    """The prefix/read-offset method without shortcuts (the reference for `decode_delta`)."""
    p, r = offsets
    prefix, full = decode(all_ids[p:r], skip), decode(all_ids[p:], skip)
    if len(full) > len(prefix) and not full.endswith("\ufffd"):
        offsets[:] = [r, len(all_ids)]
        return full[len(prefix) :]
    return ""


@pytest.mark.parametrize("skip", [True, False])
def test_ids_without_text_are_skipped_exactly(tok, skip):
    """Ids past the tokenizer and (when skipped) special ids give no text: `decode_delta` (and, in odd
    trials, `read_past_silent` on the unread ids first, as the engine does) reads past them without
    decoding, and every delta still equals the plain method's, also when only the window's tail is
    passed (`start`)."""
    import random

    decode, silent = dt.fast_decoder(tok), dt.silent_ids(tok)
    assert silent.all([len(tok) + 5], skip) and not silent.all([65], skip)
    special = sorted(silent.special)
    assert special and silent.all([special[0], len(tok)], skip) == skip
    assert not silent.all([special[0], 65], skip)
    plain = lambda ids, s: tok.backend_tokenizer.decode(ids, skip_special_tokens=s)  # noqa: E731
    text_ids = tok.encode("Grüße, 🙂 naïve café! 12 + 3 = 15", add_special_tokens=False)
    rng = random.Random(0)
    for trial in range(20):
        prompt = [rng.choice(text_ids) for _ in range(rng.randrange(1, 9))]
        ids = list(prompt)
        state, offsets = dt.new_state(len(prompt)), [max(0, len(prompt) - 6), len(prompt)]
        got = want = ""
        for _ in range(40):
            pick = rng.random()
            if pick < 0.3:
                ids.append(rng.randrange(len(tok), len(tok) + 100))  # no token at all
            elif pick < 0.45:
                ids.append(rng.choice(special))
            else:
                ids.append(rng.choice(text_ids) if rng.random() < 0.7 else rng.randrange(256))
            start = rng.randrange(state.prefix_offset + 1)
            if trial % 2 and dt.read_past_silent(ids[state.read_offset :], state, skip, silent):
                delta = ""  # the engine's first try: only the unread ids, no window built
            else:
                delta = dt.decode_delta(decode, ids[start:], state, skip, start=start, silent=silent)
            expect = _plain_delta(plain, ids, offsets, skip)
            assert delta == expect, (trial, ids)
            got, want = got + delta, want + expect
        assert got == want
