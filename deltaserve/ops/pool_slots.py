"""Slot indices of a state pool, read on the host by the plain-torch references (the Triton kernels take
them on the device and cannot check their range without a host sync)."""

from __future__ import annotations

import torch


def host_slots(state_slots: torch.Tensor, n_slots: int) -> list[int]:
    """``state_slots`` as Python ints; ValueError naming ``state_slots`` for an index past the pool's
    ``n_slots`` (negative indices are padding and pass)."""
    slots = [int(x) for x in state_slots.tolist()]
    bad = [x for x in slots if x >= n_slots]
    if bad:
        raise ValueError(f"state_slots: slot {bad[0]} is out of range for a pool of {n_slots} slots")
    return slots
