"""Reasoning parsers: split a model's `<think>…</think>` block from its answer.

`--reasoning-parser qwen3` (Qwen3, Qwen3-Next, Qwen3.5): the text before `</think>` is
`reasoning_content`, the text after it is `content`. Thinking chat templates put the opening
`<think>` into the prompt, so the output often has no opening tag: the parser accepts both. A think
block is open if the output starts with `<think>` or the prompt ends inside one; then the text up to
`</think>` is reasoning (all of it if the model was cut off while thinking). Otherwise the whole
output is content (a stray `</think>` too), which keeps streaming and non-streaming results equal.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_START = "<think>"
THINK_END = "</think>"
REASONING_PARSERS = ("qwen3",)


def prompt_opens_think(prompt_text: str) -> bool:
    """True if the prompt ends inside an unclosed `<think>` block (template-inserted opening tag)."""
    start = prompt_text.rfind(THINK_START)
    return start >= 0 and prompt_text.find(THINK_END, start) < 0


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest proper prefix of `tag` that `text` ends with."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


def split_reasoning(text: str, *, opened: bool, final: bool = True) -> tuple[str | None, str | None, int]:
    """Split `text` into (reasoning, content, consumed).

    `opened`: the prompt already opened a think block. Newlines right after `<think>` and `</think>`
    are dropped (the template's formatting). With `final=False` (streaming) a tail that could
    still become a tag is held back: `consumed` is how many chars of `text` the split accounts for.
    Empty parts come back as None.
    """
    body = text
    if body.lstrip().startswith(THINK_START):
        body = body.lstrip()[len(THINK_START) :]
        opened = True
    skipped = len(text) - len(body)
    end = body.find(THINK_END) if opened else -1
    if end >= 0:
        reasoning, content = body[:end].lstrip("\n"), body[end + len(THINK_END) :].lstrip("\n")
        return reasoning or None, content or None, len(text)
    hold = 0 if final else partial_suffix(body, THINK_END)
    if opened:
        reasoning = body[: len(body) - hold]
        return reasoning.lstrip("\n") or None, None, skipped + len(reasoning)
    if not final and THINK_START.startswith(text.lstrip()):
        return None, None, 0  # might still become "<think>"
    content = body[: len(body) - hold]
    return None, content or None, skipped + len(content)


@dataclass
class StreamingReasoningState:
    """Per-choice streaming state over the cumulative output text: the deltas it returns add up to
    `split_reasoning(text, final=True)` of the final text. Each call reads only the text added since
    the last one (plus a tag's length), so a long stream costs O(its length) in all."""

    opened: bool
    sent_reasoning: int = 0
    sent_content: int = 0
    _mode: str = "start"  # "start" (may still open with <think>), "think", "content", "after"
    _body: int = 0  # first index of the think block's body
    _scanned: int = 0  # `</think>` is not in text[:_scanned]
    _from: int = 0  # where the part being sent starts (think body, or just past `</think>`)
    _lead: int = -1  # where it starts after its leading newlines are skipped; -1: not seen yet

    def delta(self, text: str, final: bool) -> tuple[str | None, str | None]:
        """New (reasoning, content) to send, given the cumulative output `text`."""
        if self._mode == "start" and not self._decide(text, final):
            return None, None
        n = len(text)
        if self._mode == "content":  # no think block: everything is content (a stray </think> too)
            limit = n if final else n - partial_suffix(text, THINK_END)
            return None, self._send(text, limit, reasoning=False, skip_newlines=False)
        dr = None
        if self._mode == "think":
            end = text.find(THINK_END, max(self._body, self._scanned - len(THINK_END) + 1))
            if end < 0:
                self._scanned = n
                hold = 0 if final else partial_suffix(text[max(self._body, n - len(THINK_END)) :], THINK_END)
                return self._send(text, n - hold, reasoning=True), None
            dr = self._send(text, end, reasoning=True)
            self._mode, self._lead, self._from = "after", -1, end + len(THINK_END)
        return dr, self._send(text, n, reasoning=False)

    def _decide(self, text: str, final: bool) -> bool:
        """Leave "start" once the text's start is known; False while it could still become `<think>`."""
        stripped = text.lstrip()
        if stripped.startswith(THINK_START):
            self._mode, self._body = "think", len(text) - len(stripped) + len(THINK_START)
        elif not final and THINK_START.startswith(stripped):
            return False
        else:
            self._mode = "think" if self.opened else "content"
        self._scanned = self._from = self._body
        return True

    def _send(self, text: str, limit: int, *, reasoning: bool, skip_newlines: bool = True) -> str | None:
        """The current part is `text[_from:limit]` (without its leading newlines if `skip_newlines`);
        count and return what was not sent yet."""
        if self._lead < 0:
            self._lead = _skip_newlines(text, self._from, limit) if skip_newlines else self._from
            if self._lead < 0:
                return None
        sent = self.sent_reasoning if reasoning else self.sent_content
        out = text[self._lead + sent : limit]
        if reasoning:
            self.sent_reasoning += len(out)
        else:
            self.sent_content += len(out)
        return out or None


def _skip_newlines(text: str, start: int, limit: int) -> int:
    """First index in `[start, limit)` that is not a newline, or -1."""
    for i in range(start, limit):
        if text[i] != "\n":
            return i
    return -1
