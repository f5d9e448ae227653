"""Incremental detokenization and stop-string matching, per sequence.

Decoding only a small window of ids per step (the "prefix/read offset" method) keeps the cost
constant per token; a window ending in an incomplete UTF-8 character ("\ufffd") waits for more
tokens. Stop strings are searched in the newly produced text plus enough of the old text to catch
strings that span tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

_PROMPT_CONTEXT = 6  # prompt tokens decoded as left context (spacing of the first output token)


@dataclass
class DetokState:
    prefix_offset: int  # into all_ids: start of the window decoded as context
    read_offset: int  # into all_ids: first id whose text is not yet emitted


def new_state(prompt_len: int) -> DetokState:
    return DetokState(prefix_offset=max(0, prompt_len - _PROMPT_CONTEXT), read_offset=prompt_len)


def fast_decoder(tokenizer):
    """`decode(ids, skip_special_tokens)`: the Rust tokenizer directly when that gives the same text
    as the HF wrapper (no `clean_up_tokenization_spaces`), which is ~3x cheaper per call."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return lambda ids, skip: backend.decode(ids, skip_special_tokens=skip)
    return lambda ids, skip: tokenizer.decode(ids, skip_special_tokens=skip)


def decode_delta(decode, all_ids: list[int], state: DetokState, skip_special_tokens: bool) -> str:
    """New text for the ids appended since the last call; advances `state`.

    `decode(ids, skip_special_tokens) -> str` (see `fast_decoder`).
    """
    prefix = decode(all_ids[state.prefix_offset : state.read_offset], skip_special_tokens)
    full = decode(all_ids[state.prefix_offset :], skip_special_tokens)
    if len(full) > len(prefix) and not full.endswith("\ufffd"):
        state.prefix_offset, state.read_offset = state.read_offset, len(all_ids)
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
