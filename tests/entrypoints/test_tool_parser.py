"""Hermes tool-call parsing: the parser alone (non-streaming and every streaming split) and the server."""

from __future__ import annotations

import json

import pytest
from server_fakes import FakeEngine, ThreadServer, httpx  # skips this module without the HTTP packages

from deltaserve.entrypoints.openai.api_server import build_app
from deltaserve.entrypoints.openai.tool_parsers import HermesStreamState, HermesToolParser

CALL_A = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'
CALL_B = '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>'
BAD = "<tool_call>\n{not json}\n</tool_call>"


def _calls(calls: list[dict]) -> list[tuple[str, dict]]:
    for c in calls:
        assert c["type"] == "function" and c["id"].startswith("chatcmpl-tool-")
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def _stream(pieces: list[str]) -> tuple[str | None, list[dict], list[str]]:
    """Feed cumulative text piece by piece; (content, calls, content deltas)."""
    st, text, deltas, calls = HermesStreamState(), "", [], []
    for k, piece in enumerate(pieces):
        text += piece
        dc, new = st.delta(text, final=k == len(pieces) - 1)
        if dc:
            deltas.append(dc)
        for c in new:
            assert c["index"] == len(calls)
            calls.append(c)
    return "".join(deltas) or None, calls, deltas


CASES = [
    (CALL_A, None, [("get_weather", {"city": "Paris", "unit": "c"})]),
    (
        CALL_A + "\n" + CALL_B,
        None,
        [("get_weather", {"city": "Paris", "unit": "c"}), ("get_time", {"tz": "CET"})],
    ),
    (
        "Let me check.\n" + CALL_A + "\nDone.",
        "Let me check.\n\nDone.",
        [("get_weather", {"city": "Paris", "unit": "c"})],
    ),
    ("Before " + BAD + " after", "Before " + BAD + " after", []),
    (BAD + "\n" + CALL_B, BAD, [("get_time", {"tz": "CET"})]),
    ("No tools here, a < b and <tool", "No tools here, a < b and <tool", []),
    ('<tool_call>\n{"name": "f", "arguments": {}}', None, [("f", {})]),  # unclosed, complete JSON
    ('Cut off <tool_call>\n{"name": "f", "argu', 'Cut off <tool_call>\n{"name": "f", "argu', []),
    ('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>', None, [("f", {"x": 1})]),
    ('<tool_call>["name"]</tool_call>', '<tool_call>["name"]</tool_call>', []),
    ("  \n", None, []),
]


@pytest.mark.parametrize("text, content, calls", CASES)
def test_extract(text, content, calls):
    got_content, got_calls = HermesToolParser.extract(text)
    assert got_content == content and _calls(got_calls) == calls


@pytest.mark.parametrize("text, content, calls", CASES)
def test_stream_every_split_equals_extract(text, content, calls):
    ref_content, ref_calls = HermesToolParser.extract(text)
    for cut in range(len(text) + 1):  # two pieces split at every boundary
        got_content, got_calls, _ = _stream([text[:cut], text[cut:]])
        assert got_content == ref_content and _calls(got_calls) == _calls(ref_calls), cut
    # one character at a time; deltas are append-only, so equal totals mean no markup leaked
    got_content, got_calls, _ = _stream(list(text))
    assert got_content == ref_content and _calls(got_calls) == calls


def test_stream_holds_partial_tag():
    st = HermesStreamState()
    assert st.delta("Hi <tool", final=False) == ("Hi", [])
    dc, calls = st.delta("Hi <tool_call>\n{", final=False)
    assert dc is None and calls == []
    dc, calls = st.delta('Hi <tool_call>\n{"name": "f", "arguments": {}}</tool_call>', final=False)
    assert dc is None and [c["function"]["name"] for c in calls] == ["f"] and st.called
    assert st.delta('Hi <tool_call>\n{"name": "f", "arguments": {}}</tool_call> <toolbox', final=True) == (
        "  <toolbox",  # the held space after "Hi", then the rest
        [],
    )


_ATOMS = [
    "x", "Hi", " ", "\n", "  \n ", "<", "<tool", "<tool_c", "</tool", "</tool_call", "<tool_call>", "</tool_call>",
    '{"name": "f", "arguments": {"a": 1}}', '\n{"name": "g", "arguments": {}}\n', "{not json}", '"', "a < b",
    CALL_A, CALL_B, BAD,
]  # fmt: skip


@pytest.mark.parametrize("seed", range(60))
def test_stream_equals_extract_on_random_texts(seed):
    """Random mixes of tags, tag prefixes, bodies, whitespace and text, fed in random cuts: the streamed
    content and calls equal the non-streaming parse, and a repeated final call adds nothing."""
    import random

    rng = random.Random(seed)
    text = "".join(rng.choice(_ATOMS) for _ in range(rng.randint(1, 30)))
    ref_content, ref_calls = HermesToolParser.extract(text)
    cuts = sorted(rng.randint(0, len(text)) for _ in range(rng.randint(0, 10)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    got_content, got_calls, _ = _stream(pieces)
    assert got_content == ref_content and _calls(got_calls) == _calls(ref_calls), (text, cuts)
    st = HermesStreamState()
    st.delta(text, final=True)
    assert st.delta(text, final=True) == (None, [])


def test_stream_reads_each_character_a_bounded_number_of_times():
    """A long call-free stream: the scan position follows the text, so a step reads only what is new
    (plus at most a held tag prefix), not the whole text again."""
    st, text = HermesStreamState(), ""
    for k in range(2000):
        text += "word < " if k % 7 else "<tool"
        st.delta(text, final=False)
        assert st.scan.pos >= len(text) - len("<tool_call>")


# ---- server --------------------------------------------------------------------------------------------
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]


@pytest.fixture(scope="module")
def fake(qwen_tokenizer, qwen_tokenizer_dir):
    return FakeEngine(qwen_tokenizer, str(qwen_tokenizer_dir), max_model_len=512)


@pytest.fixture(scope="module")
def client(fake):
    app = build_app(fake, reasoning_parser="qwen3", tool_call_parser="hermes", enable_auto_tool_choice=True)
    srv = ThreadServer(app)
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        yield c
    srv.stop()


@pytest.fixture(scope="module")
def noreason_client(fake):
    srv = ThreadServer(build_app(fake, tool_call_parser="hermes", enable_auto_tool_choice=True))
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        yield c
    srv.stop()


@pytest.fixture(scope="module")
def plain_client(fake):
    srv = ThreadServer(build_app(fake, reasoning_parser="qwen3"))
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        yield c
    srv.stop()


def _body(**kw) -> dict:
    return {"messages": [{"role": "user", "content": "weather?"}], "tools": TOOLS, "max_tokens": 200, **kw}


def _events(client, body: dict) -> list[dict]:
    events = []
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line:
                events.append(line.removeprefix("data: "))
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def _merge_stream(events: list[dict]) -> tuple[str, str, list[dict], str | None]:
    """(reasoning, content, tool calls, finish_reason) accumulated from stream deltas."""
    reasoning, content, calls, finish = "", "", {}, None
    for e in events:
        (ch,) = e["choices"]
        d = ch["delta"]
        reasoning += d.get("reasoning_content") or ""
        content += d.get("content") or ""
        for tc in d.get("tool_calls") or []:
            cur = calls.setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
            cur["id"] = cur["id"] or tc.get("id")
            cur["name"] += tc.get("function", {}).get("name") or ""
            cur["arguments"] += tc.get("function", {}).get("arguments") or ""
        finish = ch["finish_reason"] or finish
    return reasoning, content, [calls[k] for k in sorted(calls)], finish


def test_server_auto_tool_calls_with_reasoning(client, script):
    script("<think>\nI need the weather.\n</think>\n\nChecking.\n" + CALL_A + "\n" + CALL_B)
    out = client.post("/v1/chat/completions", json=_body(tool_choice="auto"))
    assert out.status_code == 200, out.text
    (c,) = out.json()["choices"]
    msg = c["message"]
    assert c["finish_reason"] == "tool_calls"
    assert msg["reasoning_content"] == "I need the weather.\n" and msg["content"] == "Checking."
    assert _calls(msg["tool_calls"]) == [
        ("get_weather", {"city": "Paris", "unit": "c"}),
        ("get_time", {"tz": "CET"}),
    ]
    reasoning, content, calls, finish = _merge_stream(
        _events(client, _body())
    )  # tool_choice defaults to auto
    assert (reasoning, content, finish) == ("I need the weather.\n", "Checking.", "tool_calls")
    assert [(t["name"], json.loads(t["arguments"])) for t in calls] == _calls(msg["tool_calls"])
    assert all(t["id"].startswith("chatcmpl-tool-") for t in calls)


def test_server_only_a_call_has_null_content(client, script):
    script(CALL_B)
    (c,) = client.post("/v1/chat/completions", json=_body()).json()["choices"]
    assert c["message"]["content"] is None and c["finish_reason"] == "tool_calls"
    events = _events(client, _body())
    assert not any("<tool" in (e["choices"][0]["delta"].get("content") or "") for e in events)
    _, content, calls, finish = _merge_stream(events)
    assert (content, finish) == ("", "tool_calls")
    assert [(t["name"], t["arguments"]) for t in calls] == [("get_time", '{"tz": "CET"}')]


def test_server_without_reasoning_parser(noreason_client, script):
    text = "Sure thing, checking now.\n" + CALL_A + "\n" + CALL_B + "\n"
    script(text)
    (c,) = noreason_client.post("/v1/chat/completions", json=_body()).json()["choices"]
    assert c["message"]["content"] == "Sure thing, checking now." and c["finish_reason"] == "tool_calls"
    want = _calls(c["message"]["tool_calls"])
    assert [n for n, _ in want] == ["get_weather", "get_time"]
    reasoning, content, calls, finish = _merge_stream(_events(noreason_client, _body()))
    assert (reasoning, content, finish) == ("", "Sure thing, checking now.", "tool_calls")
    assert [(t["name"], json.loads(t["arguments"])) for t in calls] == want


def test_server_no_call_and_tool_choice_none(client, script):
    script("Plain answer.\n\n")  # no call: content stripped in both paths, finish_reason kept
    (c,) = client.post("/v1/chat/completions", json=_body()).json()["choices"]
    assert _merge_stream(_events(client, _body()))[1:] == ("Plain answer.", [], "stop")
    assert (c["message"]["content"], c["message"]["tool_calls"], c["finish_reason"]) == (
        "Plain answer.",
        [],
        "stop",
    )
    script(CALL_A)
    (c,) = client.post("/v1/chat/completions", json=_body(tool_choice="none")).json()["choices"]
    assert (
        c["message"]["content"] == CALL_A
        and c["message"]["tool_calls"] == []
        and c["finish_reason"] == "stop"
    )
    _, content, calls, finish = _merge_stream(_events(client, _body(tool_choice="none")))
    assert (content, calls, finish) == (CALL_A, [], "stop")


def test_server_named_tool_choice_prefills_the_call(client, fake, qwen_tokenizer, script):
    script('{"city": "Rome"}}\n</tool_call>')
    named = {"type": "function", "function": {"name": "get_weather"}}
    (c,) = client.post("/v1/chat/completions", json=_body(tool_choice=named)).json()["choices"]
    prompt = qwen_tokenizer.decode(fake.requests_seen[-1][1])
    assert prompt.endswith('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": ')
    assert _calls(c["message"]["tool_calls"]) == [("get_weather", {"city": "Rome"})]
    assert c["message"]["content"] is None and c["finish_reason"] == "stop"
    _, content, calls, _ = _merge_stream(_events(client, _body(tool_choice=named)))
    assert content == "" and [(t["name"], json.loads(t["arguments"])) for t in calls] == [
        ("get_weather", {"city": "Rome"})
    ]


def test_server_named_tool_choice_closes_an_open_think(client, fake, qwen_tokenizer, script):
    script('{"tz": "UTC"}}\n</tool_call>')
    msgs = [{"role": "user", "content": "time?"}, {"role": "assistant", "content": "<think>\n"}]
    named = {"type": "function", "function": {"name": "get_time"}}
    body = _body(messages=msgs, tool_choice=named, add_generation_prompt=False, continue_final_message=True)
    (c,) = client.post("/v1/chat/completions", json=body).json()["choices"]
    prompt = qwen_tokenizer.decode(fake.requests_seen[-1][1])
    assert prompt.endswith('<think>\n</think>\n\n<tool_call>\n{"name": "get_time", "arguments": ')
    assert c["message"]["reasoning_content"] is None
    assert _calls(c["message"]["tool_calls"]) == [("get_time", {"tz": "UTC"})]


@pytest.mark.parametrize(
    "tool_choice, tools, needle",
    [
        ("required", TOOLS, "'required' is not supported"),
        ("auto", None, "requires tools"),
        ({"type": "function", "function": {"name": "nope"}}, TOOLS, "'nope' is not in tools"),
        ("sometimes", TOOLS, "tool_choice: must be"),
    ],
)
def test_server_bad_tool_choice(client, tool_choice, tools, needle):
    body = {"messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": tool_choice}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text


def test_server_without_flag_refuses_auto(plain_client, script):
    script(CALL_A)
    for body in (_body(tool_choice="auto"), _body()):
        r = plain_client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400
        assert "--enable-auto-tool-choice" in r.json()["error"]["message"]
    (c,) = plain_client.post("/v1/chat/completions", json=_body(tool_choice="none")).json()["choices"]
    assert c["message"]["content"] == CALL_A and c["message"]["tool_calls"] == []


def test_build_app_and_cli_flags(fake):
    from deltaserve.entrypoints.cli import build_parser, main

    with pytest.raises(ValueError, match="tool_call_parser"):
        build_app(fake, tool_call_parser="mistral")
    with pytest.raises(ValueError, match="requires tool_call_parser"):
        build_app(fake, enable_auto_tool_choice=True)
    args = build_parser().parse_args(["serve", "--enable-auto-tool-choice", "--tool-call-parser", "hermes"])
    assert args.enable_auto_tool_choice and args.tool_call_parser == "hermes"
    with pytest.raises(SystemExit, match="requires --tool-call-parser"):
        main(["serve", "--enable-auto-tool-choice"])
