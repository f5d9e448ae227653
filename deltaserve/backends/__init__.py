"""Implementations of the `context` backend Protocols over explicit state tensors."""

from deltaserve.backends.ops_backend import OpsBackend, StateTensors, allocate_state_tensors

__all__ = ["OpsBackend", "StateTensors", "allocate_state_tensors"]
