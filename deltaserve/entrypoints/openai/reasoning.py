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


def _partial_suffix(text: str, tag: str) -> int:
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
    hold = 0 if final else _partial_suffix(body, THINK_END)
    if opened:
        reasoning = body[: len(body) - hold]
        return reasoning.lstrip("\n") or None, None, skipped + len(reasoning)
    if not final and THINK_START.startswith(text.lstrip()):
        return None, None, 0  # might still become "<think>"
    content = body[: len(body) - hold]
    return None, content or None, skipped + len(content)


@dataclass
class StreamingReasoningState:
    """Per-choice state: how much reasoning and content text has been sent."""

    opened: bool
    sent_reasoning: int = 0
    sent_content: int = 0

    def delta(self, text: str, final: bool) -> tuple[str | None, str | None]:
        """New (reasoning, content) to send, given the cumulative output `text`."""
        reasoning, content, _ = split_reasoning(text, opened=self.opened, final=final)
        reasoning, content = reasoning or "", content or ""
        dr = reasoning[self.sent_reasoning :]
        dc = content[self.sent_content :]
        self.sent_reasoning = max(self.sent_reasoning, len(reasoning))
        self.sent_content = max(self.sent_content, len(content))
        return dr or None, dc or None
