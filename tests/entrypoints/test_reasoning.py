"""The qwen3 reasoning parser: full-text split and the streaming deltas agree on every split point."""

from __future__ import annotations

import random

import pytest

from deltaserve.entrypoints.openai.reasoning import (
    StreamingReasoningState,
    prompt_opens_think,
    split_reasoning,
)

CASES = [
    # (output text, prompt opened <think>, reasoning, content)
    ("<think>\nplan a\n</think>\n\nanswer b", False, "plan a\n", "answer b"),
    ("plan a\n</think>\n\nanswer b", True, "plan a\n", "answer b"),
    ("plan a\n</think>\n\nanswer b", False, None, "plan a\n</think>\n\nanswer b"),  # no open block: text
    ("<think>\ncut off while thinking", False, "cut off while thinking", None),
    ("cut off while thinking", True, "cut off while thinking", None),
    ("plain answer, no tags", False, None, "plain answer, no tags"),
    ("<think>\n\n</think>\n\nanswer only", False, None, "answer only"),
    ("a </thin", False, None, "a </thin"),  # a tag prefix at the very end of a finished output is text
    ("", False, None, None),
]


@pytest.mark.parametrize("text, opened, reasoning, content", CASES)
def test_split(text, opened, reasoning, content):
    r, c, consumed = split_reasoning(text, opened=opened)
    assert (r, c) == (reasoning, content) and consumed == len(text)


@pytest.mark.parametrize("text, opened, reasoning, content", CASES)
@pytest.mark.parametrize("step", [1, 2, 3, 7])
def test_streaming_deltas_add_up(text, opened, reasoning, content, step):
    state = StreamingReasoningState(opened=opened)
    got_r, got_c = "", ""
    cuts = list(range(step, len(text), step)) + [len(text)]
    for end in cuts:
        dr, dc = state.delta(text[:end], final=end == len(text))
        got_r += dr or ""
        got_c += dc or ""
    assert (got_r, got_c) == (reasoning or "", content or "")


def test_streaming_never_leaks_a_partial_tag():
    state = StreamingReasoningState(opened=True)
    seen = []
    for text in ("abc", "abc</", "abc</thi", "abc</think>", "abc</think>\n\nok"):
        dr, dc = state.delta(text, final=False)
        seen.append((dr, dc))
    assert seen == [("abc", None), (None, None), (None, None), (None, None), (None, "ok")]


def test_prompt_opens_think():
    assert prompt_opens_think("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_think("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not prompt_opens_think("<|im_start|>assistant\n")


PIECES = ["<think>", "</think>", "<th", "</thi", "\n", "\n\n", " ", "a", "bc", "<", ">", "think", "/"]


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("opened", [False, True])
def test_streaming_equals_the_full_split_on_random_texts(seed, opened):
    """Random mixes of tags, tag prefixes, newlines and text, fed in random cuts: the streamed
    deltas add up to the full split of the final text (never a retracted or leaked piece)."""
    rng = random.Random(seed)
    text = "".join(rng.choice(PIECES) for _ in range(rng.randrange(0, 30)))
    cuts = sorted({rng.randrange(0, len(text) + 1) for _ in range(rng.randrange(0, 12))} | {len(text)})
    state = StreamingReasoningState(opened=opened)
    got_r = got_c = ""
    for end in cuts:
        dr, dc = state.delta(text[:end], final=end == len(text))
        got_r += dr or ""
        got_c += dc or ""
    r, c, _ = split_reasoning(text, opened=opened)
    assert (got_r, got_c) == (r or "", c or ""), (text, cuts)


def test_a_reemitted_think_tag_after_an_opened_prompt_is_not_reasoning():
    """The prompt opened the block and the model writes `<think>` again: its prefix is held back,
    not streamed as reasoning (the full split drops the tag)."""
    text = "<think>\nabc</think>\n\nanswer"
    state = StreamingReasoningState(opened=True)
    got = [state.delta(text[:i], final=i == len(text)) for i in range(1, len(text) + 1)]
    assert "".join(r or "" for r, _ in got) == "abc"
    assert "".join(c or "" for _, c in got) == "answer"


def test_each_delta_reads_only_new_text():
    """A long stream costs O(length): the state scans from where it stopped, not from the start."""
    state = StreamingReasoningState(opened=True)
    text = "x" * 100_000
    assert state.delta(text, final=False) == (text, None)
    assert state._scanned == len(text)
    assert state.delta(text + "y</think>\nz", final=True) == ("y", "z")
