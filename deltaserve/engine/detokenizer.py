"""Incremental detokenization and stop-string matching, per sequence.

Decoding only a small window of ids per step (the "prefix/read offset" method) keeps the cost
constant per token; a window ending in an incomplete UTF-8 character ("\ufffd") waits for more
tokens. Ids that the Rust decoder drops (no token, or special tokens being skipped) are read past
without decoding, which keeps the window small for them too. Stop strings are searched in the newly
produced text plus enough of the old text to catch strings that span tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

_PROMPT_CONTEXT = 6  # prompt tokens decoded as left context (spacing of the first output token)


@dataclass
class DetokState:
    prefix_offset: int  # into all_ids: start of the window decoded as context
    read_offset: int  # into all_ids: first id whose text is not yet emitted
    prefix_text: str | None = None  # decode of all_ids[prefix_offset:read_offset], once known


def new_state(prompt_len: int) -> DetokState:
    return DetokState(prefix_offset=max(0, prompt_len - _PROMPT_CONTEXT), read_offset=prompt_len)


def fast_decoder(tokenizer):
    """`decode(ids, skip_special_tokens)`: the Rust tokenizer directly when that gives the same text
    as the HF wrapper (no `clean_up_tokenization_spaces`), which is ~3x cheaper per call."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return backend.decode  # (ids, skip_special_tokens), positional
    return lambda ids, skip: tokenizer.decode(ids, skip_special_tokens=skip)


class SilentIds:
    """Ids that `fast_decoder`'s Rust decoder drops before its decoder runs (ids without a token, and
    special tokens when skipping them), so they never change the text of a window they are part of."""

    def __init__(self, backend) -> None:
        self.num_ids = max(backend.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        self.special = frozenset(i for i, t in backend.get_added_tokens_decoder().items() if t.special)

    def __contains__(self, token: int) -> bool:  # as when skipping special tokens
        return token >= self.num_ids or token in self.special

    def all(self, ids: list[int], skip_special_tokens: bool) -> bool:
        """Whether every id of the non-empty `ids` is dropped (the common cases without a Python loop)."""
        n = self.num_ids
        if min(ids) >= n:
            return True
        if not skip_special_tokens or self.special.isdisjoint(ids):
            return False
        return all(t >= n or t in self.special for t in ids)


def silent_ids(tokenizer) -> SilentIds | None:
    """The `SilentIds` of `fast_decoder(tokenizer)`, or None when that decoder is not the Rust one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return SilentIds(backend)
    return None


def read_past_silent(
    unread: list[int], state: DetokState, skip_special_tokens: bool, silent: SilentIds
) -> bool:
    """If the ids not yet read (`unread`, from `state.read_offset` to the end) all decode to nothing,
    mark them read and return True: the text cannot change, and since the decoder drops them from any
    window they sit in, reading past them gives the same text later as leaving them unread. Callers
    can try this on the few unread ids before building the longer window `decode_delta` needs."""
    if (
        unread
        and unread[-1] in silent  # cheap rejection of the usual case, a token with text
        and silent.all(unread, skip_special_tokens)
    ):
        state.read_offset += len(unread)
        return True
    return False


def decode_delta(
    decode,
    all_ids: list[int],
    state: DetokState,
    skip_special_tokens: bool,
    *,
    start: int = 0,
    silent: SilentIds | None = None,
) -> str:
    """New text for the ids appended since the last call; advances `state`.

    `decode(ids, skip_special_tokens) -> str` (see `fast_decoder`). `all_ids` may hold only the ids
    from position `start` on (`start <= state.prefix_offset`), so callers need not build the whole list.
    `silent`: the decoder's `SilentIds` (`silent_ids`), to skip decoding ids that add no text.
    """
    p, r, end = state.prefix_offset - start, state.read_offset - start, start + len(all_ids)
    if silent is not None and read_past_silent(all_ids[r:], state, skip_special_tokens, silent):
        return ""
    prefix = state.prefix_text
    if prefix is None:
        prefix = state.prefix_text = decode(all_ids[p:r], skip_special_tokens)
    full = decode(all_ids[p:], skip_special_tokens)
    if len(full) > len(prefix) and not full.endswith("\ufffd"):
        state.prefix_offset, state.read_offset, state.prefix_text = state.read_offset, end, None
        return full[len(prefix) :]
    return ""


def find_stop(text: str, new_len: int, stops: list[str]) -> tuple[str, int] | None:
    """First stop string ending in the last `new_len` chars of `text`: (stop, start index) or None."""
    if not stops or new_len <= 0:
        return None
    best: tuple[str, int] | None = None
    for stop in stops:
        start = max(0, len(text) - new_len - len(stop) + 1)
        idx = text.find(stop, start)
        if idx >= 0 and (best is None or idx < best[1]):
            best = (stop, idx)
    return best


def holdback(params) -> int:
    """Chars kept back from streamed text while running, so a stop string never leaks partially."""
    if not params.stop or params.include_stop_str_in_output:
        return 0
    return max(len(s) for s in params.stop) - 1
