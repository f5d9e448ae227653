"""`bench.common.time_cuda_queued`: device time of a call queued behind a GPU sleep, refused when the
call synchronises with the device (the figure would be host time)."""

from __future__ import annotations

import pytest
import torch

from deltaserve.bench.common import time_cuda_queued

pytestmark = pytest.mark.gpu


def test_queued_time_of_a_device_only_call_is_its_kernel_time():
    x = torch.randn(1 << 24, device="cuda")
    ms = time_cuda_queued(lambda: x.mul_(1.0))
    assert 0.0 < ms < 5.0  # 64 MB read + written: ~0.03 ms on an H100; far below the 5 ms sleep


def test_a_call_that_synchronises_is_refused():
    x = torch.randn(1024, device="cuda")
    with pytest.raises(RuntimeError, match="host sync"):
        time_cuda_queued(lambda: x.mul_(1.0).cpu())
