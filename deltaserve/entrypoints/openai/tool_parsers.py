"""Tool-call parsers: turn a model's tool-call markup into OpenAI `tool_calls` (vLLM's `--tool-call-parser`).

Both formats wrap each call in a block `<tool_call> ... </tool_call>`; they differ in the block body.

`hermes` (Qwen3, Qwen3-Next): the body is JSON, `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`.

`qwen3_coder` (Qwen3-Coder, Qwen3.5): the body is XML-style, one `<parameter=ARG>` per argument:
`<tool_call>\\n<function=NAME>\\n<parameter=ARG>\\nVALUE\\n</parameter>\\n</function>\\n</tool_call>`.
VALUE is raw text (the chat template writes strings as they are, other values as JSON); it is typed by
the request's tool schema (`convert_value`), strings keep their text less the one newline the template
puts on each side.

Common rules: a block whose body does not parse stays in the content, verbatim. An unclosed block at the
end of the output (cut off, or stopped at `</tool_call>`) counts if its body is complete. `content` is
the text outside the blocks, stripped of surrounding whitespace, None if empty.

Streaming (`ToolStreamState`) sends content as it settles, holds back a tail that could still become
`<tool_call>` (and trailing whitespace), and sends each call whole, once its block has closed: the
concatenated deltas equal the non-streaming result for any split of the text.
"""

from __future__ import annotations

import ast
import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deltaserve.entrypoints.openai.reasoning import partial_suffix

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
FUNCTION_PREFIX = "<function="
FUNCTION_END = "</function>"
PARAMETER_PREFIX = "<parameter="
PARAMETER_END = "</parameter>"
TOOL_CALL_PARSERS = ("hermes", "qwen3_coder")

Call = tuple[str, str]  # (function name, arguments as a JSON string)
BodyParser = Callable[[str], list[Call] | None]  # a block body -> its calls, None if it does not parse


def tool_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


def parse_call_body(body: str) -> tuple[str, str] | None:
    """(name, arguments as a JSON string) from a hermes block body, or None if it is not a valid call."""
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


def _hermes_body(body: str) -> list[Call] | None:
    call = parse_call_body(body)
    return [call] if call else None


def make_tool_call(name: str, arguments: str) -> dict[str, Any]:
    """An OpenAI `tool_calls[i]` entry (new id)."""
    return {"id": tool_call_id(), "type": "function", "function": {"name": name, "arguments": arguments}}


@dataclass
class _Scan:
    """What a scan of `text[pos:]` decided: outside-text pieces and (name, arguments) calls."""

    pos: int = 0
    outside: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)


def _scan(text: str, state: _Scan, final: bool, parse: BodyParser) -> tuple[str, list[Call]]:
    """Advance `state` over `text` past every settled piece: text that can no longer start a
    `<tool_call>`, closed blocks, and (not `final`) the text before an open block.

    Returns the unsettled tail's (content, calls): with `final`, the tail's content/calls; otherwise
    ("", []) (what is safe to show has been settled into `state.outside`). Each call reads `text` from
    `state.pos` on, so a stream costs O(its length), not O(length) per step.
    """
    while True:
        start = text.find(TOOL_CALL_START, state.pos)
        if start < 0:
            tail = text[state.pos :]
            if final:
                return tail, []
            safe = tail[: len(tail) - partial_suffix(tail, TOOL_CALL_START)]
            state.outside.append(safe)
            state.pos += len(safe)
            return "", []
        body_at = start + len(TOOL_CALL_START)
        end = text.find(TOOL_CALL_END, body_at)
        if end < 0:
            if not final:
                state.outside.append(text[state.pos : start])
                state.pos = start
                return "", []
            calls = parse(text[body_at:])
            return (text[state.pos : start], calls) if calls else (text[state.pos :], [])
        state.outside.append(text[state.pos : start])
        calls = parse(text[body_at:end])
        if calls is None:
            state.outside.append(text[start : end + len(TOOL_CALL_END)])
        else:
            state.calls.extend(calls)
        state.pos = end + len(TOOL_CALL_END)


def _extract(text: str, parse: BodyParser) -> tuple[str | None, list[dict[str, Any]]]:
    state = _Scan()
    tail, calls = _scan(text, state, True, parse)
    content = ("".join(state.outside) + tail).strip()
    return content or None, [make_tool_call(n, a) for n, a in state.calls + calls]


@dataclass
class ToolStreamState:
    """Per-choice streaming state over the cumulative content text; `parse` reads one block body.

    Content goes out as `_scan` settles it, stripped like the non-streaming content: leading
    whitespace is dropped, trailing whitespace waits (it is content only if more text follows)."""

    parse: BodyParser = _hermes_body
    scan: _Scan = field(default_factory=_Scan)
    sent_calls: int = 0
    taken: int = 0  # settled pieces (`scan.outside`) already turned into deltas
    started: bool = False  # a non-whitespace character has been sent
    held: str = ""  # trailing whitespace not sent yet

    def delta(self, text: str, final: bool) -> tuple[str | None, list[dict[str, Any]]]:
        """New (content, tool_call deltas) given the cumulative content `text`.

        Each tool-call delta is `{index, id, type, function: {name, arguments}}` (a whole call).
        """
        tail, tail_calls = _scan(text, self.scan, final, self.parse)
        if final:  # the rest settles too (a repeated final call then adds nothing)
            self.scan.outside.append(tail)
            self.scan.calls.extend(tail_calls)
            self.scan.pos = len(text)
        pieces = self.scan.outside[self.taken :]
        self.taken = len(self.scan.outside)
        sent = []
        for piece in pieces:
            if not self.started:
                piece = piece.lstrip()
                self.started = bool(piece)
            piece = self.held + piece
            body = piece.rstrip()
            self.held = piece[len(body) :]
            sent.append(body)
        dc = "".join(sent)
        calls = self.scan.calls
        out = []
        for k in range(self.sent_calls, len(calls)):
            out.append({"index": k, **make_tool_call(*calls[k])})
        self.sent_calls = len(calls)
        return dc or None, out

    @property
    def called(self) -> bool:
        return self.sent_calls > 0


class HermesStreamState(ToolStreamState):
    """Streaming state of the hermes format."""


class HermesToolParser:
    """The hermes format (JSON block bodies); `tools` is unused (the JSON carries its own types)."""

    name = "hermes"

    def __init__(self, tools: list[dict[str, Any]] | None = None) -> None:
        del tools

    @staticmethod
    def extract(text: str) -> tuple[str | None, list[dict[str, Any]]]:
        """(content, tool_calls) of a complete output `text`; tool_calls entries as OpenAI's."""
        return _extract(text, _hermes_body)

    def stream_state(self) -> ToolStreamState:
        return HermesStreamState()

    @staticmethod
    def named_prefix(name: str) -> str:
        """The markup a named tool_choice prefills, so the model writes only the arguments."""
        return f'{TOOL_CALL_START}\n{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": '


# ---- qwen3_coder ---------------------------------------------------------------------------------------
_NO = object()  # "this text is not a value of that type"


def _jsonable(value: Any) -> Any:
    """`value` as plain JSON (tuples -> lists), or _NO if it cannot be written as strict JSON."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return _NO


def _as_type(text: str, typ: str) -> Any:
    """`text` (stripped) read as a JSON-schema `typ`, or _NO."""
    if typ == "null":
        return None if text in ("null", "None") else _NO
    if typ == "boolean":
        low = text.lower()  # the template writes Python bools as True/False
        return low == "true" if low in ("true", "false") else _NO
    if typ in ("integer", "number"):
        try:
            v = json.loads(text)
        except ValueError:  # also: an integer with too many digits
            return _NO
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return _NO
        if typ == "integer":
            return int(v) if isinstance(v, int) or v.is_integer() else _NO
        return v
    if typ in ("object", "array"):
        want = dict if typ == "object" else list
        try:
            v = json.loads(text)
        except ValueError:
            try:  # single-quoted / Python-style literals; literal_eval runs no code
                v = ast.literal_eval(text)
            except Exception:  # SyntaxError, ValueError, MemoryError, RecursionError, ...
                return _NO
            if isinstance(v, tuple) and want is list:
                v = list(v)
        return _jsonable(v) if isinstance(v, want) else _NO
    return _NO


def _schema_types(schema: dict[str, Any]) -> list[str]:
    """The JSON-schema type names `schema` allows (`type`, a list of them, or anyOf/oneOf branches)."""
    t = schema.get("type")
    if isinstance(t, str):
        return [t]
    if isinstance(t, list):
        return [x for x in t if isinstance(x, str)]
    out: list[str] = []
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            if isinstance(sub, dict):
                out += _schema_types(sub)
    return out


def convert_value(raw: str, schema: Any) -> Any:
    """The JSON value of a parameter's text `raw` (template newlines already removed) under its schema.

    Non-string types are tried first (null, then boolean/integer/number/object/array), on the stripped
    text; the first that reads wins. A string type, no schema (unknown parameter) or text that fits none
    of the types gives `raw` itself.
    """
    types = _schema_types(schema) if isinstance(schema, dict) else []
    order = ("null", "boolean", "integer", "number", "object", "array")
    text = raw.strip()
    for typ in sorted({t for t in types if t in order}, key=order.index):
        v = _as_type(text, typ)
        if v is not _NO:
            return v
    return raw


def tool_schemas(tools: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """{function name: {parameter name: its JSON schema}} from a request's `tools` (bad entries skipped)."""
    out: dict[str, dict[str, Any]] = {}
    for tool in tools or []:
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            continue
        params = fn.get("parameters")
        props = params.get("properties") if isinstance(params, dict) else None
        out.setdefault(fn["name"], props if isinstance(props, dict) else {})
    return out


def _skip_space(s: str, pos: int) -> int:
    while pos < len(s) and s[pos].isspace():
        pos += 1
    return pos


def _open_tag(s: str, pos: int, prefix: str) -> tuple[str, int] | None:
    """(NAME, position after the tag) for `prefix NAME>` at `pos`; None if absent or NAME is bad."""
    if not s.startswith(prefix, pos):
        return None
    close = s.find(">", pos + len(prefix))
    if close < 0:
        return None
    name = s[pos + len(prefix) : close].strip()
    if not name or "<" in name or "\n" in name:
        return None
    return name, close + 1


def _strip_template_newlines(value: str) -> str:
    """Drop the one newline the template writes after `<parameter=..>` and the one before `</parameter>`."""
    if value.startswith("\n"):
        value = value[1:]
    if value.endswith("\n"):
        value = value[:-1]
    return value


def parse_xml_body(body: str, schemas: dict[str, dict[str, Any]]) -> list[Call] | None:
    """The calls of a qwen3_coder block body (`<function=..>` elements, whitespace between), else None.

    Strict: every `<parameter=..>` needs its `</parameter>`, every `<function=..>` its `</function>`, and
    only whitespace may sit between elements; anything else makes the whole block None (it then stays in
    the content). A value runs to the first `</parameter>`, so a value cannot itself contain that tag.
    Repeated parameter names: the last wins.
    """
    calls: list[Call] = []
    pos = _skip_space(body, 0)
    while pos < len(body):
        head = _open_tag(body, pos, FUNCTION_PREFIX)
        if head is None:
            return None
        name, pos = head
        props = schemas.get(name, {})
        args: dict[str, Any] = {}
        while True:
            pos = _skip_space(body, pos)
            if body.startswith(FUNCTION_END, pos):
                pos += len(FUNCTION_END)
                break
            param = _open_tag(body, pos, PARAMETER_PREFIX)
            if param is None:
                return None
            pname, pos = param
            end = body.find(PARAMETER_END, pos)
            if end < 0:
                return None
            args[pname] = convert_value(_strip_template_newlines(body[pos:end]), props.get(pname))
            pos = end + len(PARAMETER_END)
        calls.append((name, json.dumps(args, ensure_ascii=False)))
        pos = _skip_space(body, pos)
    return calls or None


class Qwen3CoderToolParser:
    """The qwen3_coder format (XML-style block bodies), typed by the request's `tools` schemas."""

    name = "qwen3_coder"

    def __init__(self, tools: list[dict[str, Any]] | None = None) -> None:
        self.schemas = tool_schemas(tools)

    def parse_body(self, body: str) -> list[Call] | None:
        return parse_xml_body(body, self.schemas)

    def extract(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        """(content, tool_calls) of a complete output `text`; tool_calls entries as OpenAI's."""
        return _extract(text, self.parse_body)

    def stream_state(self) -> ToolStreamState:
        return ToolStreamState(parse=self.parse_body)

    @staticmethod
    def named_prefix(name: str) -> str:
        """The markup a named tool_choice prefills, so the model writes only the parameters."""
        return f"{TOOL_CALL_START}\n{FUNCTION_PREFIX}{name}>\n"


ToolParser = HermesToolParser | Qwen3CoderToolParser


def make_tool_parser(name: str, tools: list[dict[str, Any]] | None = None) -> ToolParser:
    """The parser `name` (one of TOOL_CALL_PARSERS) for a request with `tools`."""
    if name == "hermes":
        return HermesToolParser(tools)
    if name == "qwen3_coder":
        return Qwen3CoderToolParser(tools)
    raise ValueError(f"tool_call_parser: {name!r} is not one of {TOOL_CALL_PARSERS}")
