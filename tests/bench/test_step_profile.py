"""`bench.step_profile.idle_by_gap`: busy time is the union of device events, gaps are named by the
events around them."""

from __future__ import annotations

from deltaserve.bench.step_profile import idle_by_gap


def test_busy_is_the_union_and_each_gap_is_named_by_its_neighbours():
    spans = [(20.0, 25.0, "c"), (0.0, 10.0, "a"), (5.0, 12.0, "b"), (22.0, 24.0, "d"), (30.0, 31.0, "a")]
    busy, window, gaps = idle_by_gap(spans)
    assert busy == 12.0 + 5.0 + 1.0
    assert window == 31.0
    assert gaps == {"b -> c": 8.0, "c -> a": 5.0}


def test_one_event_has_no_gaps():
    assert idle_by_gap([(3.0, 7.0, "k")]) == (4.0, 4.0, {})
