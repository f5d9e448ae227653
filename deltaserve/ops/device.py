"""Per-device facts that kernel launch choices read, cached (a device-properties query costs host time
on every call otherwise)."""

from __future__ import annotations

import torch

_SM_COUNT: dict[int, int] = {}
_CAPABILITY: dict[int, tuple[int, int]] = {}


def device_index(device: torch.device) -> int:
    """The CUDA device index of ``device`` (the current device for a bare ``cuda``)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 4 off CUDA (TRITON_INTERPRET=1 on CPU tensors)."""
    if device.type != "cuda":
        return 4
    idx = device_index(device)
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device; (0, 0) off CUDA."""
    if device.type != "cuda":
        return 0, 0
    idx = device_index(device)
    if idx not in _CAPABILITY:
        _CAPABILITY[idx] = torch.cuda.get_device_capability(idx)
    return _CAPABILITY[idx]
