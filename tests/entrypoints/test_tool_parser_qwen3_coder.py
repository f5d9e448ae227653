"""qwen3_coder tool-call parsing (XML-style `<function=..><parameter=..>` calls of Qwen3.5 / Qwen3-Coder):
schema typing, the parser alone (non-streaming and streaming at any split) and the server."""

from __future__ import annotations

import json
import random

import jinja2
import pytest
from server_fakes import FakeEngine, ThreadServer, httpx  # skips this module without the HTTP packages

from deltaserve.entrypoints.openai.api_server import build_app
from deltaserve.entrypoints.openai.tool_parsers import (
    TOOL_CALL_PARSERS,
    HermesToolParser,
    Qwen3CoderToolParser,
    convert_value,
    make_tool_parser,
)


def _fn(name: str, **props: dict) -> dict:
    return {
        "type": "function",
        "function": {"name": name, "parameters": {"type": "object", "properties": props}},
    }


TOOLS = [
    _fn(
        "write_file",
        path={"type": "string"},
        content={"type": "string"},
        mode={"type": "integer"},
        append={"type": "boolean"},
    ),
    _fn(
        "search",
        query={"type": "string"},
        limit={"type": "integer"},
        threshold={"type": "number"},
        filters={"type": "object"},
        tags={"type": "array", "items": {"type": "string"}},
        cursor={"type": ["string", "null"]},
        page={"anyOf": [{"type": "integer"}, {"type": "null"}]},
    ),
    _fn("get_weather", city={"type": "string"}, days={"type": "integer"}),
]


def call(name: str, **params: str) -> str:
    """A call block as the chat template writes it (values are already text)."""
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


def _calls(calls: list[dict]) -> list[tuple[str, dict]]:
    for c in calls:
        assert c["type"] == "function" and c["id"].startswith("chatcmpl-tool-")
        assert isinstance(c["function"]["arguments"], str)
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def _extract(text: str, tools: list[dict] | None = TOOLS) -> tuple[str | None, list[tuple[str, dict]]]:
    content, calls = Qwen3CoderToolParser(tools).extract(text)
    return content, _calls(calls)


# ---- schema typing --------------------------------------------------------------------------------------
INT, NUM, BOOL = {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
OBJ, ARR, STR = {"type": "object"}, {"type": "array"}, {"type": "string"}
NULLABLE_INT = {"anyOf": [{"type": "integer"}, {"type": "null"}]}


@pytest.mark.parametrize(
    "raw, schema, want",
    [
        ("5", INT, 5),
        (" 7 ", INT, 7),
        ("-3", INT, -3),
        ("5.0", INT, 5),
        ("5.5", INT, "5.5"),
        ("five", INT, "five"),
        ("9" * 5000, INT, "9" * 5000),  # past Python's int-string limit: the text
        ("1.5", NUM, 1.5),
        ("2", NUM, 2),
        ("-1e-3", NUM, -0.001),
        ("NaN", NUM, "NaN"),  # not strict JSON
        ("1e999", NUM, "1e999"),
        ("true", NUM, "true"),
        ("True", BOOL, True),  # the template writes Python bools with `| string`
        ("false", BOOL, False),
        ("yes", BOOL, "yes"),
        ('{"a": [1, 2], "b": null}', OBJ, {"a": [1, 2], "b": None}),
        ("{'a': True, 'b': None}", OBJ, {"a": True, "b": None}),  # Python literal
        ("[1, 2]", OBJ, "[1, 2]"),
        ("{'a': {1, 2}}", OBJ, "{'a': {1, 2}}"),  # a set has no JSON form
        ("__import__('os').getcwd()", OBJ, "__import__('os').getcwd()"),  # never evaluated
        ('["x", "y"]', ARR, ["x", "y"]),
        ("(1, 2)", ARR, [1, 2]),
        ("[1", ARR, "[1"),
        ("[NaN]", ARR, "[NaN]"),
        ("42", STR, "42"),
        (" spaced ", STR, " spaced "),  # strings are verbatim
        ("null", {"type": ["string", "null"]}, None),
        ("abc", {"type": ["string", "null"]}, "abc"),
        ("None", NULLABLE_INT, None),
        ("3", NULLABLE_INT, 3),
        ("3", {"type": ["integer", "string"]}, 3),
        ("x3", {"type": ["integer", "string"]}, "x3"),
        ("42", None, "42"),  # unknown parameter
        ("42", {}, "42"),  # no type information
        ("42", {"type": "mystery"}, "42"),
    ],
)
def test_convert_value(raw, schema, want):
    got = convert_value(raw, schema)
    assert got == want and type(got) is type(want)


# ---- non-streaming --------------------------------------------------------------------------------------
CODE = 'def f(x):\n    """Doc."""\n\n    return x < 1 and x > -1\n'
CALL_W = call("write_file", path="src/a.py", content=CODE, mode="420", append="False")
CALL_S = call(
    "search",
    query="  two spaces  ",
    limit="10",
    threshold="0.25",
    filters='{"lang": "py", "stars": {"min": 5}}',
    tags='["a", "b"]',
    cursor="null",
    page="None",
)
WANT_W = ("write_file", {"path": "src/a.py", "content": CODE, "mode": 420, "append": False})
WANT_S = (
    "search",
    {
        "query": "  two spaces  ",
        "limit": 10,
        "threshold": 0.25,
        "filters": {"lang": "py", "stars": {"min": 5}},
        "tags": ["a", "b"],
        "cursor": None,
        "page": None,
    },
)
CALL_G = call("get_weather", city="Paris", days="3")
WANT_G = ("get_weather", {"city": "Paris", "days": 3})


def test_extract_several_typed_calls_after_content():
    text = "I will write the file, then search.\n\n" + CALL_W + "\n" + CALL_S + "\n" + CALL_G
    content, calls = _extract(text)
    assert content == "I will write the file, then search."
    assert calls == [WANT_W, WANT_S, WANT_G]
    args = Qwen3CoderToolParser(TOOLS).extract(CALL_G)[1][0]["function"]["arguments"]
    assert args == '{"city": "Paris", "days": 3}'  # OpenAI shape: a JSON string, keys in call order


@pytest.mark.parametrize(
    "value",
    [
        CODE,
        "\nstarts with a blank line",
        "ends with blank lines\n\n",
        "line 1\r\nline 2",
        "tags in text: <b>x</b> </function> <parameter=y> <function=z>",
        "unicode: déjà vu — 東京",
        "",
    ],
)
def test_multiline_string_values_are_verbatim(value):
    content, calls = _extract(call("write_file", path="p", content=value))
    assert content is None and calls == [("write_file", {"path": "p", "content": value})]


def test_without_schema_or_unknown_names_values_stay_strings():
    text = call("write_file", path="p", mode="420", extra="7") + call("nope", n="1")
    assert _extract(text)[1] == [
        ("write_file", {"path": "p", "mode": 420, "extra": "7"}),
        ("nope", {"n": "1"}),
    ]
    assert _extract(text, tools=None)[1] == [
        ("write_file", {"path": "p", "mode": "420", "extra": "7"}),
        ("nope", {"n": "1"}),
    ]
    # odd tools entries are skipped, the flat (Responses API) shape is read too
    flat = [{"type": "function", "name": "nope", "parameters": {"properties": {"n": INT}}}, "junk", {}]
    assert _extract(text, tools=flat)[1][1] == ("nope", {"n": 1})


# rendered the way the Qwen3.5 / Qwen3-Coder chat templates render an assistant's tool_calls
RENDER = jinja2.Environment().from_string(
    "{%- for tc in calls %}"
    "{{- '<tool_call>\\n<function=' + tc.name + '>\\n' }}"
    "{%- for k, v in tc.arguments|items %}"
    "{{- '<parameter=' + k + '>\\n' }}"
    "{%- set v = v | tojson if v is mapping or (v is sequence and v is not string) else v | string %}"
    "{{- v }}{{- '\\n</parameter>\\n' }}"
    "{%- endfor %}"
    "{{- '</function>\\n</tool_call>' }}"
    "{%- endfor %}"
)


def test_template_rendering_round_trips():
    want = [WANT_W, WANT_S, WANT_G, ("get_weather", {}), ("search", {"page": 2, "cursor": "c1"})]
    text = RENDER.render(calls=[{"name": n, "arguments": a} for n, a in want])
    assert _extract(text) == (None, want)


# (text, content, calls): malformed blocks stay in the content verbatim, whatever follows still parses
BAD_NO_PARAM_END = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</function>\n</tool_call>"
BAD_NO_FUNC_END = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</tool_call>"


def _kept(text: str) -> tuple[str, str, list]:
    """A case whose whole text stays content."""
    return text, text, []


CASES = [
    (CALL_G, None, [WANT_G]),
    ("Checking.\n" + CALL_G + "\nDone.", "Checking.\n\nDone.", [WANT_G]),
    ("No calls, a < b and <tool", "No calls, a < b and <tool", []),
    (BAD_NO_PARAM_END, BAD_NO_PARAM_END, []),
    (BAD_NO_FUNC_END + "\n" + CALL_G, BAD_NO_FUNC_END, [WANT_G]),
    _kept("<tool_call>\n<function=f>\nstray text\n</function>\n</tool_call>"),
    _kept("<tool_call>\n<function=f>\n</function>\ntrailing\n</tool_call>"),
    _kept("<tool_call>\n<function=>\n</function>\n</tool_call>"),
    _kept("<tool_call>\n<function=f\n</function>\n</tool_call>"),
    _kept("<tool_call>\n<function=f>\n<parameter=>\nx\n</parameter>\n</function>\n</tool_call>"),
    _kept("<tool_call>\n</tool_call>"),
    _kept('<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'),  # hermes JSON body
    _kept("<function=f>\n</function>"),  # no <tool_call> wrapper: not a call
    ("<tool_call>\n<function=get_weather>\n</function>\n</tool_call>", None, [("get_weather", {})]),
    _kept("<tool_call><function=f><parameter=a>1</parameter><function=g></function></tool_call>"),
    # two functions in one block (not what the template writes, but unambiguous)
    (
        "<tool_call>\n<function=f>\n</function>\n<function=g>\n</function>\n</tool_call>",
        None,
        [("f", {}), ("g", {})],
    ),
    # cut off mid-value: content; closed function, block cut at </tool_call> (a stop string): a call
    _kept("Let me see <tool_call>\n<function=get_weather>\n<parameter=city>\nPar"),
    (
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n",
        None,
        [("get_weather", {"city": "Paris"})],
    ),
    _kept("<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>"),  # no </function>
    ("  \n", None, []),
]


@pytest.mark.parametrize("text, content, calls", CASES)
def test_extract(text, content, calls):
    assert _extract(text) == (content, calls)


# ---- streaming ------------------------------------------------------------------------------------------
def _stream(pieces: list[str]) -> tuple[str | None, list[dict], list[str]]:
    """Feed cumulative text piece by piece; (content, calls, content deltas)."""
    st, text, deltas, calls = Qwen3CoderToolParser(TOOLS).stream_state(), "", [], []
    for k, piece in enumerate(pieces):
        text += piece
        dc, new = st.delta(text, final=k == len(pieces) - 1)
        if dc:
            deltas.append(dc)
        for c in new:
            assert c["index"] == len(calls) and set(c) == {"index", "id", "type", "function"}
            calls.append(c)
    return "".join(deltas) or None, calls, deltas


def _same(got: tuple[str | None, list[dict], list[str]], ref: tuple[str | None, list[dict]]) -> bool:
    # arguments compared as strings: the stream must send exactly the non-streaming JSON
    strip = [(c["function"]["name"], c["function"]["arguments"]) for c in ref[1]]
    return got[0] == ref[0] and [(c["function"]["name"], c["function"]["arguments"]) for c in got[1]] == strip


STREAM_CASES = [t for t, _, _ in CASES] + [
    "I will write the file, then search.\n\n" + CALL_W + "\n" + CALL_S + "\n" + CALL_G + "\n",
]


@pytest.mark.parametrize("text", STREAM_CASES)
def test_stream_every_split_equals_extract(text):
    ref = Qwen3CoderToolParser(TOOLS).extract(text)
    for cut in range(len(text) + 1):  # two pieces split at every boundary
        assert _same(_stream([text[:cut], text[cut:]]), ref), cut
    # one character at a time; deltas are append-only, so equal totals mean no markup leaked
    assert _same(_stream(list(text)), ref)
    rng = random.Random(len(text))
    for _ in range(20):  # random multi-piece splits, empty pieces included
        cuts = sorted(rng.randint(0, len(text)) for _ in range(rng.randint(1, 12)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert _same(_stream(pieces), ref), cuts


def test_stream_holds_partial_tags_and_sends_whole_calls():
    st = Qwen3CoderToolParser(TOOLS).stream_state()
    assert st.delta("Hi <tool_c", final=False) == ("Hi", [])
    assert st.delta("Hi <tool_call>\n<function=get_weather>\n<parameter=city>\nPa", final=False) == (None, [])
    text = "Hi " + CALL_G
    dc, calls = st.delta(text, final=False)
    assert dc is None and _calls(calls) == [WANT_G] and calls[0]["index"] == 0 and st.called
    assert st.delta(text + "\n<tool", final=False) == (None, [])
    dc, calls = st.delta(text + "\n" + CALL_G, final=True)
    assert dc is None and [c["index"] for c in calls] == [1]


# ---- registry and flags ---------------------------------------------------------------------------------
def test_registry_and_cli_choices():
    from deltaserve.entrypoints.cli import build_parser

    assert TOOL_CALL_PARSERS == ("hermes", "qwen3_coder")
    assert isinstance(make_tool_parser("hermes", TOOLS), HermesToolParser)
    assert isinstance(make_tool_parser("qwen3_coder", TOOLS), Qwen3CoderToolParser)
    with pytest.raises(ValueError, match="tool_call_parser"):
        make_tool_parser("mistral")
    parser = build_parser()
    for name in TOOL_CALL_PARSERS:  # the CLI offers every registered parser
        args = parser.parse_args(["serve", "--enable-auto-tool-choice", "--tool-call-parser", name])
        assert args.tool_call_parser == name and args.enable_auto_tool_choice
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--tool-call-parser", "mistral"])
    assert Qwen3CoderToolParser.named_prefix("f") == "<tool_call>\n<function=f>\n"


# ---- server ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake(qwen_tokenizer, qwen_tokenizer_dir):
    return FakeEngine(qwen_tokenizer, str(qwen_tokenizer_dir), max_model_len=1024)


@pytest.fixture(scope="module")
def client(fake):
    app = build_app(
        fake, reasoning_parser="qwen3", tool_call_parser="qwen3_coder", enable_auto_tool_choice=True
    )
    srv = ThreadServer(app)
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        yield c
    srv.stop()


def _body(**kw) -> dict:
    return {"messages": [{"role": "user", "content": "do it"}], "tools": TOOLS, "max_tokens": 400, **kw}


def _merge_stream(client, body: dict) -> tuple[str, str, list[tuple[str, str]], str | None]:
    """(reasoning, content, [(name, arguments)], finish_reason) accumulated from the SSE deltas."""
    reasoning, content, calls, finish = "", "", {}, None
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        lines = [line.removeprefix("data: ") for line in r.iter_lines() if line]
    assert lines[-1] == "[DONE]"
    for line in lines[:-1]:
        (ch,) = json.loads(line)["choices"]
        d = ch["delta"]
        reasoning += d.get("reasoning_content") or ""
        content += d.get("content") or ""
        for tc in d.get("tool_calls") or []:
            assert tc["id"].startswith("chatcmpl-tool-") and tc["type"] == "function"
            cur = calls.setdefault(tc["index"], ["", ""])
            cur[0] += tc["function"]["name"]
            cur[1] += tc["function"]["arguments"]
        finish = ch["finish_reason"] or finish
    return reasoning, content, [tuple(calls[k]) for k in sorted(calls)], finish


def test_server_auto_calls_typed_streaming_equals_non_streaming(client, script):
    script("<think>\nWrite, then search.\n</think>\n\nOn it.\n" + CALL_W + "\n" + CALL_S)
    (c,) = client.post("/v1/chat/completions", json=_body()).json()["choices"]
    msg = c["message"]
    assert c["finish_reason"] == "tool_calls"
    assert (msg["reasoning_content"], msg["content"]) == ("Write, then search.\n", "On it.")
    assert _calls(msg["tool_calls"]) == [WANT_W, WANT_S]
    reasoning, content, calls, finish = _merge_stream(client, _body())
    assert (reasoning, content, finish) == ("Write, then search.\n", "On it.", "tool_calls")
    assert calls == [(t["function"]["name"], t["function"]["arguments"]) for t in msg["tool_calls"]]


def test_server_malformed_call_stays_content(client, script):
    script(BAD_NO_PARAM_END)
    (c,) = client.post("/v1/chat/completions", json=_body()).json()["choices"]
    assert (c["message"]["content"], c["message"]["tool_calls"], c["finish_reason"]) == (
        BAD_NO_PARAM_END,
        [],
        "stop",
    )
    assert _merge_stream(client, _body())[1:] == (BAD_NO_PARAM_END, [], "stop")


def test_server_named_tool_choice_prefills_the_function(client, fake, qwen_tokenizer, script):
    script(
        "<parameter=city>\nRome\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>"
    )
    named = {"type": "function", "function": {"name": "get_weather"}}
    (c,) = client.post("/v1/chat/completions", json=_body(tool_choice=named)).json()["choices"]
    prompt = qwen_tokenizer.decode(fake.requests_seen[-1][1])
    assert prompt.endswith("<tool_call>\n<function=get_weather>\n")
    assert _calls(c["message"]["tool_calls"]) == [("get_weather", {"city": "Rome", "days": 2})]
    assert c["message"]["content"] is None and c["finish_reason"] == "stop"
    _, content, calls, _ = _merge_stream(client, _body(tool_choice=named))
    assert content == "" and calls == [("get_weather", '{"city": "Rome", "days": 2}')]
