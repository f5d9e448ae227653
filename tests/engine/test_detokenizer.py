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
