"""Loads the tasks' local data (jsonl files beside this file) as `datasets.DatasetDict`s."""

from __future__ import annotations

import json
from pathlib import Path


def load_docs(**kwargs):
    """The generate_until task's documents (data.jsonl)."""
    return _load("data.jsonl")


def load_mc_docs(**kwargs):
    """The multiple_choice task's documents (data_mc.jsonl)."""
    return _load("data_mc.jsonl")


def _load(name: str):
    import datasets

    path = Path(__file__).with_name(name)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
