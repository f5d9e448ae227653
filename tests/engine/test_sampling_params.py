"""SamplingParams.validate: every bad field is refused with a message naming it."""

from __future__ import annotations

import pytest

from deltaserve.engine.sampling_params import SamplingParams


@pytest.mark.parametrize(
    "field, value",
    [
        ("n", 0),
        ("max_tokens", 0),
        ("min_tokens", -1),
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_k", -2),
        ("min_p", 1.5),
        ("repetition_penalty", 0.0),
        ("presence_penalty", 3.0),
        ("frequency_penalty", -3.0),
        ("logprobs", 21),
        ("seed", 2**70),
        ("seed", 1.5),
        ("stop", [""]),
        ("stop", 5),  # not a list: named at construction, not a TypeError from list(5)
        ("stop_token_ids", [-1]),
        ("stop_token_ids", 7),
    ],
)
def test_bad_field_is_named(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value}).validate()


def test_min_tokens_above_max_tokens() -> None:
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(min_tokens=5, max_tokens=2).validate()


def test_good_params_pass_and_stop_string_is_listed() -> None:
    p = SamplingParams(stop="###", seed=2**63, temperature=0.0).validate()
    assert p.stop == ["###"] and p.greedy
