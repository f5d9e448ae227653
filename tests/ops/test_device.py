"""ops/device.py: the cached per-device facts kernel launch choices read."""

from __future__ import annotations

import pytest
import torch

from deltaserve.ops import device


def test_off_cuda_defaults():
    cpu = torch.device("cpu")
    assert device.num_sms(cpu) == 4 and device.capability(cpu) == (0, 0)


@pytest.mark.gpu
def test_cuda_facts_match_torch_and_are_cached():
    cuda = torch.device("cuda")
    idx = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(idx)
    assert (
        device.capability(cuda) == (props.major, props.minor) == device.capability(torch.device("cuda", idx))
    )
    assert device.num_sms(cuda) == props.multi_processor_count
    assert idx in device._CAPABILITY and idx in device._SM_COUNT
