"""Checkpoint loading: streaming safetensors, name mapping, strict accounting."""

from deltaserve.loader.load import LoadReport, WeightLoadError, load_checkpoint, load_named_weights
from deltaserve.loader.safetensors_io import CheckpointError, CheckpointReader

__all__ = [
    "CheckpointError",
    "CheckpointReader",
    "LoadReport",
    "WeightLoadError",
    "load_checkpoint",
    "load_named_weights",
]
