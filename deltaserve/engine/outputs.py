"""Request outputs, shaped like vLLM's so users' scripts carry over."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any


class GrowingPrefix(Sequence):
    """The first `n` items of a list that only ever grows by appending, without copying it.

    A running sequence's output hands these out for its token ids and logprobs, so a streamed step
    costs O(1) per request instead of O(tokens so far); finished outputs carry real lists. It reads
    like a read-only list (like vLLM's `GenericSequence` token ids): `len`, indexing, slices (which
    return lists), iteration, `==` with lists and tuples, `list + view`; `list(view)` copies it.
    """

    __slots__ = ("_items", "_n")
    __hash__ = None  # type: ignore[assignment]  # like a list

    def __init__(self, items: list, n: int | None = None) -> None:
        self._items = items
        self._n = len(items) if n is None else n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            start, stop, step = i.indices(self._n)
            if step == 1:
                return self._items[start:stop]
            return [self._items[j] for j in range(start, stop, step)]  # (-1 would mean "last" in a slice)
        j = i + self._n if i < 0 else i
        if not 0 <= j < self._n:
            raise IndexError("index out of range")
        return self._items[j]

    def __iter__(self) -> Iterator:
        return itertools.islice(self._items, self._n)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (GrowingPrefix, list, tuple)):
            return len(other) == self._n and self._items[: self._n] == list(other)
        return NotImplemented

    def __add__(self, other: Any) -> list:
        return self._items[: self._n] + list(other)

    def __radd__(self, other: Any) -> list:
        return list(other) + self._items[: self._n]

    def __repr__(self) -> str:
        return repr(self._items[: self._n])


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    """One of a request's `n` continuations (cumulative: everything generated so far). While it runs,
    `token_ids` and `logprobs` are `GrowingPrefix` views; once finished, lists."""

    index: int
    text: str
    token_ids: Sequence[int]
    cumulative_logprob: float | None = None
    # per generated token: {token_id: Logprob} (the sampled token and the top-N), or None
    logprobs: Sequence[dict[int, Logprob]] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_token_time: float | None = None
    finished_time: float | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    metrics: RequestMetrics | None = None
    num_cached_tokens: int = 0
    # per prompt token: {token_id: Logprob} (the actual token and the top-N); the first entry is None
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    extra: dict = field(default_factory=dict)
