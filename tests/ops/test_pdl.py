"""When kernels launch with programmatic dependent launch (`ops/pdl.py`)."""

from __future__ import annotations

import pytest
import torch

from deltaserve.ops import pdl


@pytest.mark.parametrize(
    "cuda, major, want",
    [("12.8", 9, True), ("13.0", 10, True), ("12.2", 9, False), ("12.8", 8, False), (None, 9, False)],
)
def test_needs_hopper_and_cuda_12_3(monkeypatch, cuda, major, want):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (major, 0))
    assert pdl._sm90_or_later.__wrapped__(0) is want


def test_off_on_cpu_tensors_and_when_disabled(monkeypatch):
    assert pdl.use_pdl(torch.zeros(1)) is False
    monkeypatch.setattr(pdl, "ENABLED", False)
    assert pdl.use_pdl(torch.zeros(1)) is False
    assert pdl.pdl_launch(False) == {} and pdl.pdl_launch(True) == {"launch_pdl": True}
