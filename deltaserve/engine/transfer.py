"""Host -> device copies that never wait for the device.

A `copy_(..., non_blocking=True)` from *pageable* host memory is not asynchronous on CUDA: the driver
may first wait for the stream to drain, then stage the bytes. Under overlap scheduling that wait is
the whole step in flight, so the host cannot enqueue the next step until the GPU idles. Every per-step
host->device copy therefore goes through pinned memory. The caching host allocator keeps a pinned
block until the copy that reads it has run, so the host tensor may be dropped at once.
"""

from __future__ import annotations

import torch


def to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`torch.tensor(values, dtype)` on `device`, copied without a host wait (pinned on CUDA)."""
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


def host_to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device`, copied without a host wait (through a pinned copy on CUDA)."""
    if device.type != "cuda":
        return host.to(device)
    return _pinned(host).to(device, non_blocking=True)


def copy_into(dst: torch.Tensor, host: torch.Tensor) -> None:
    """`dst.copy_(host)` for a CPU `host`, stream-ordered and without a host wait when `dst` is on CUDA."""
    if dst.device.type != "cuda":
        dst.copy_(host)
        return
    dst.copy_(_pinned(host), non_blocking=True)


def _pinned(host: torch.Tensor) -> torch.Tensor:
    """`host` if already pinned and contiguous, else a contiguous pinned copy (a strided source would
    be made contiguous again, pageable, inside the device copy)."""
    if host.is_contiguous() and host.is_pinned():
        return host
    staged = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
    staged.copy_(host)
    return staged
