"""Decode-graph batch sizes (the capture itself is covered by the GPU tests)."""

from __future__ import annotations

from deltaserve.engine.graph import capture_sizes


def test_capture_sizes_cover_every_batch():
    for max_bs in (1, 3, 8, 20, 256):
        sizes = capture_sizes(max_bs)
        assert sizes == sorted(set(sizes)) and sizes[-1] == max_bs
        assert all(any(s >= b for s in sizes) for b in range(1, max_bs + 1))
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert capture_sizes(0) == []
