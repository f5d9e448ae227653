"""Tool-call parsers: turn a model's tool-call markup into OpenAI `tool_calls` (vLLM's `--tool-call-parser`).

`hermes` (Qwen3, Qwen3-Next, Qwen3.5 instruct): each call is a block
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`. A block whose body is not a JSON object
with a string `name` stays in the content, verbatim. An unclosed block at the end of the output (cut
off, or stopped at `</tool_call>`) counts if its JSON is complete. `content` is the text outside the
blocks, stripped of surrounding whitespace, None if empty.

Streaming (`HermesStreamState`) sends content as it settles, holds back a tail that could still
become `<tool_call>` (and trailing whitespace), and sends each call whole, once its block has closed:
the concatenated deltas equal the non-streaming result for any split of the text.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
TOOL_CALL_PARSERS = ("hermes",)


def tool_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest proper prefix of `tag` that `text` ends with."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


def parse_call_body(body: str) -> tuple[str, str] | None:
    """(name, arguments as a JSON string) from a block body, or None if it is not a valid call."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        return obj["name"], args
    return obj["name"], json.dumps(args, ensure_ascii=False)


def make_tool_call(name: str, arguments: str) -> dict[str, Any]:
    """An OpenAI `tool_calls[i]` entry (new id)."""
    return {"id": tool_call_id(), "type": "function", "function": {"name": name, "arguments": arguments}}


@dataclass
class _Scan:
    """What a scan of `text[pos:]` decided: outside-text pieces and (name, arguments) calls."""

    pos: int = 0
    outside: list[str] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)


def _scan(text: str, state: _Scan, final: bool) -> tuple[str, tuple[str, str] | None]:
    """Advance `state` over `text` past every settled piece (text before a `<tool_call>`, closed blocks).

    Returns the unsettled tail's (content, call): with `final`, the tail's content/call; otherwise the
    tail's content that is safe to show (no possible tag prefix) and None.
    """
    while True:
        start = text.find(TOOL_CALL_START, state.pos)
        if start < 0:
            tail = text[state.pos :]
            if not final:
                tail = tail[: len(tail) - _partial_suffix(tail, TOOL_CALL_START)]
            return tail, None
        body_at = start + len(TOOL_CALL_START)
        end = text.find(TOOL_CALL_END, body_at)
        if end < 0:
            if not final:
                return text[state.pos : start], None
            call = parse_call_body(text[body_at:])
            return (text[state.pos : start], call) if call else (text[state.pos :], None)
        state.outside.append(text[state.pos : start])
        call = parse_call_body(text[body_at:end])
        if call is None:
            state.outside.append(text[start : end + len(TOOL_CALL_END)])
        else:
            state.calls.append(call)
        state.pos = end + len(TOOL_CALL_END)


class HermesToolParser:
    """Non-streaming hermes parser."""

    name = "hermes"

    @staticmethod
    def extract(text: str) -> tuple[str | None, list[dict[str, Any]]]:
        """(content, tool_calls) of a complete output `text`; tool_calls entries as OpenAI's."""
        state = _Scan()
        tail, call = _scan(text, state, final=True)
        calls = state.calls + ([call] if call else [])
        content = ("".join(state.outside) + tail).strip()
        return content or None, [make_tool_call(n, a) for n, a in calls]


@dataclass
class HermesStreamState:
    """Per-choice streaming state over the cumulative content text."""

    scan: _Scan = field(default_factory=_Scan)
    sent_content: int = 0
    sent_calls: int = 0

    def delta(self, text: str, final: bool) -> tuple[str | None, list[dict[str, Any]]]:
        """New (content, tool_call deltas) given the cumulative content `text`.

        Each tool-call delta is `{index, id, type, function: {name, arguments}}` (a whole call).
        """
        tail, call = _scan(text, self.scan, final)
        # trailing whitespace waits: it is content only if more text follows
        content = ("".join(self.scan.outside) + tail).strip()
        calls = self.scan.calls + ([call] if call else [])
        dc = content[self.sent_content :]
        self.sent_content = max(self.sent_content, len(content))
        out = []
        for k in range(self.sent_calls, len(calls)):
            out.append({"index": k, **make_tool_call(*calls[k])})
        self.sent_calls = len(calls)
        return dc or None, out

    @property
    def called(self) -> bool:
        return self.sent_calls > 0
