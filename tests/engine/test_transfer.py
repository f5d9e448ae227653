"""`engine.transfer` on the CPU (the pinned CUDA path runs in the engine GPU tests)."""

from __future__ import annotations

import torch

from deltaserve.engine.transfer import copy_into, host_to_device, to_device

CPU = torch.device("cpu")


def test_to_device_keeps_values_and_dtype():
    t = to_device([[1, -2], [3, 4]], torch.int32, CPU)
    assert t.dtype == torch.int32 and t.tolist() == [[1, -2], [3, 4]]


def test_copy_into_a_strided_view_from_a_strided_source():
    host = torch.arange(24, dtype=torch.int32).view(4, 6)
    dst = torch.zeros(5, 8, dtype=torch.int32)
    copy_into(dst[1:4, 2:5], host[:3, 1:4])
    assert torch.equal(dst[1:4, 2:5], host[:3, 1:4])
    assert dst.sum() == host[:3, 1:4].sum()  # nothing outside the view written
    assert torch.equal(host_to_device(host[:, ::2], CPU), host[:, ::2])
