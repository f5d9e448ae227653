"""The HTTP layer against a fake engine on a real uvicorn server: every endpoint, field and error."""

from __future__ import annotations

import json
import threading
import time

import pytest
from server_fakes import (  # skips this module without the HTTP packages
    EOS_ID,
    FakeEngine,
    ThreadServer,
    httpx,
)

from deltaserve.entrypoints.openai.api_server import build_app

MODEL = "fake-model"
MAX_LEN = 256


@pytest.fixture(scope="module")
def fake(qwen_tokenizer, qwen_tokenizer_dir):
    return FakeEngine(qwen_tokenizer, str(qwen_tokenizer_dir), max_model_len=MAX_LEN, max_num_seqs=4)


@pytest.fixture(scope="module")
def server(fake):
    app = build_app(
        fake,
        served_model_names=[MODEL, "alias"],
        reasoning_parser="qwen3",
        tool_call_parser="hermes",
        enable_auto_tool_choice=True,
    )
    srv = ThreadServer(app)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def post(client, path: str, body: dict) -> dict:
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def stream(client, path: str, body: dict) -> list[dict]:
    """The SSE events of a streamed request (ends with [DONE], checked)."""
    events = []
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line:
                assert line.startswith("data: ")
                events.append(line[len("data: ") :])
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def greedy_tokens(client, prompt: str, n: int) -> list[int]:
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "logprobs": 0}
    out = post(client, "/v1/completions", body)
    return out


# ---- info endpoints --------------------------------------------------------------------------------
def test_health_version_models(client):
    assert client.get("/health").status_code == 200
    assert "version" in client.get("/version").json()
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [MODEL, "alias"]
    assert models["data"][0]["max_model_len"] == MAX_LEN and models["data"][0]["object"] == "model"


def test_tokenizer_info(client, qwen_tokenizer):
    info = client.get("/tokenizer_info").json()
    assert info["eos_token"] == "<|im_end|>" and info["pad_token"] == "<|endoftext|>"
    assert info["chat_template"] == qwen_tokenizer.chat_template and info["model_max_length"] == MAX_LEN


def test_tokenize_detokenize(client, qwen_tokenizer):
    text = "Hello world, this is deltaserve."
    tok = post(client, "/tokenize", {"prompt": text, "return_token_strs": True})
    assert tok["tokens"] == qwen_tokenizer.encode(text)
    assert tok["count"] == len(tok["tokens"]) and tok["max_model_len"] == MAX_LEN
    assert len(tok["token_strs"]) == tok["count"]
    assert post(client, "/detokenize", {"tokens": tok["tokens"]})["prompt"] == text
    chat = post(client, "/tokenize", {"messages": [{"role": "user", "content": "hi"}]})
    assert qwen_tokenizer.decode(chat["tokens"]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


# ---- completions -----------------------------------------------------------------------------------
def test_completion_basic_usage_and_finish(client, qwen_tokenizer):
    prompt = "The capital of France is"
    out = post(
        client, "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 5, "temperature": 0}
    )
    assert out["object"] == "text_completion" and out["model"] == MODEL and out["id"].startswith("cmpl-")
    (choice,) = out["choices"]
    assert choice["finish_reason"] == "length" and choice["index"] == 0 and choice["text"]
    n_prompt = len(qwen_tokenizer.encode(prompt))
    assert out["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 5, "total_tokens": n_prompt + 5}
    # default max_tokens is 16 on /v1/completions; the alias name works too
    out = post(client, "/v1/completions", {"model": "alias", "prompt": prompt, "temperature": 0})
    assert out["usage"]["completion_tokens"] == 16


def test_completion_prompt_forms(client, qwen_tokenizer):
    a, b = "first prompt", "a second, longer prompt"
    ids_a, ids_b = qwen_tokenizer.encode(a), qwen_tokenizer.encode(b)
    ref = post(client, "/v1/completions", {"prompt": a, "max_tokens": 4, "temperature": 0})["choices"][0][
        "text"
    ]
    by_ids = post(client, "/v1/completions", {"prompt": ids_a, "max_tokens": 4, "temperature": 0})
    assert by_ids["choices"][0]["text"] == ref and by_ids["usage"]["prompt_tokens"] == len(ids_a)
    for prompts in ([a, b], [ids_a, ids_b]):
        out = post(client, "/v1/completions", {"prompt": prompts, "max_tokens": 3, "n": 2, "temperature": 0})
        assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
        assert (
            out["choices"][0]["text"]
            == out["choices"][1]["text"]
            == post(client, "/v1/completions", {"prompt": prompts[0], "max_tokens": 3, "temperature": 0})[
                "choices"
            ][0]["text"]
        )
        assert out["usage"]["prompt_tokens"] == len(ids_a) + len(ids_b)
        assert out["usage"]["completion_tokens"] == 12


def test_echo_and_logprobs(client, qwen_tokenizer):
    prompt = "Echo me please"
    n_prompt = len(qwen_tokenizer.encode(prompt))
    out = post(
        client,
        "/v1/completions",
        {"prompt": prompt, "max_tokens": 4, "temperature": 0, "echo": True, "logprobs": 2},
    )
    c = out["choices"][0]
    assert c["text"].startswith(prompt)
    lp = c["logprobs"]
    assert len(lp["tokens"]) == n_prompt + 4 and "".join(lp["tokens"]) == c["text"]
    assert lp["token_logprobs"][:n_prompt] == [None] * n_prompt
    assert all(isinstance(x, float) and x <= 0 for x in lp["token_logprobs"][n_prompt:])
    offsets = lp["text_offset"]
    assert offsets[0] == 0 and all(o2 - o1 == len(t) for o1, o2, t in zip(offsets, offsets[1:], lp["tokens"]))
    for top, tok, val in zip(
        lp["top_logprobs"][n_prompt:], lp["tokens"][n_prompt:], lp["token_logprobs"][n_prompt:]
    ):
        assert 2 <= len(top) <= 3 and top[tok] == val  # top-2 plus the sampled token
    no_lp = post(client, "/v1/completions", {"prompt": prompt, "max_tokens": 2, "temperature": 0})
    assert no_lp["choices"][0]["logprobs"] is None


def test_sampling_fields_reach_the_engine(client, fake):
    body = {
        "prompt": "fields",
        "max_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 5,
        "min_p": 0.05,
        "n": 2,
        "seed": 123,
        "stop": ["xyz", "abc"],
        "stop_token_ids": [11, 12],
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "repetition_penalty": 1.1,
        "ignore_eos": True,
        "min_tokens": 2,
        "logprobs": 3,
        "skip_special_tokens": False,
        "include_stop_str_in_output": True,
        "user": "someone",
        "some_future_openai_field": 1,  # ignored, like vLLM
    }
    post(client, "/v1/completions", body)
    p = fake.requests_seen[-1][2]
    assert (p.max_tokens, p.temperature, p.top_p, p.top_k, p.min_p, p.n, p.seed) == (
        7,
        0.5,
        0.9,
        5,
        0.05,
        2,
        123,
    )
    assert p.stop == ["xyz", "abc"] and p.stop_token_ids == [11, 12]
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.1, 0.2, 1.1)
    assert p.ignore_eos and p.min_tokens == 2 and p.logprobs == 3
    assert not p.skip_special_tokens and p.include_stop_str_in_output


def test_generation_config_defaults(client, fake):
    post(client, "/v1/completions", {"prompt": "defaults", "max_tokens": 2})
    p = fake.requests_seen[-1][2]
    assert (p.temperature, p.top_p) == (0.7, 0.8)  # from the checkpoint's generation_config.json
    post(client, "/v1/completions", {"prompt": "defaults", "max_tokens": 2, "temperature": 0})
    assert fake.requests_seen[-1][2].temperature == 0.0


def _stream_text(events: list[dict]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for e in events:
        for c in e["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + c["text"]
    return texts


def test_stream_equals_nonstream_greedy(client):
    body = {"prompt": ["stream me", "and me too"], "max_tokens": 12, "temperature": 0, "n": 2}
    full = post(client, "/v1/completions", body)
    events = stream(client, "/v1/completions", body)
    assert all(e["object"] == "text_completion" and e["id"] == events[0]["id"] for e in events)
    texts = _stream_text(events)
    assert texts == {c["index"]: c["text"] for c in full["choices"]}
    finishes = {c["index"]: c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]}
    assert finishes == {c["index"]: c["finish_reason"] for c in full["choices"]}
    assert all(e.get("usage") is None for e in events)  # no usage unless asked


def test_stream_include_usage(client):
    body = {"prompt": "usage", "max_tokens": 6, "temperature": 0, "stream_options": {"include_usage": True}}
    events = stream(client, "/v1/completions", body)
    last = events[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 6
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 6
    body["stream_options"]["continuous_usage_stats"] = True
    events = stream(client, "/v1/completions", body)
    assert all(e["usage"] is not None for e in events)


def test_n_and_seed(client):
    body = {"prompt": "sample", "max_tokens": 10, "temperature": 1.0, "n": 3, "seed": 7}
    a = post(client, "/v1/completions", body)
    b = post(client, "/v1/completions", body)
    texts = [c["text"] for c in a["choices"]]
    assert len(texts) == 3 and len(set(texts)) > 1  # the n samples differ
    assert texts == [c["text"] for c in b["choices"]]  # same seed, same samples
    assert a["usage"]["completion_tokens"] == 30
    streamed = _stream_text(stream(client, "/v1/completions", body))
    assert [streamed[i] for i in range(3)] == texts


def test_stop_string_spanning_tokens(client, qwen_tokenizer):
    prompt = "stop strings"
    ref = post(
        client, "/v1/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0, "logprobs": 0}
    )
    tokens = ref["choices"][0]["logprobs"]["tokens"]
    full = ref["choices"][0]["text"]
    k = next(k for k in range(2, len(tokens) - 1) if len(tokens[k]) >= 3 and len(tokens[k + 1]) >= 3)
    stop = tokens[k][-2:] + tokens[k + 1][:2]  # spans the boundary between tokens k and k+1
    idx = full.index(stop)
    body = {"prompt": prompt, "max_tokens": 12, "temperature": 0, "stop": stop}
    out = post(client, "/v1/completions", body)["choices"][0]
    assert out["text"] == full[:idx] and out["finish_reason"] == "stop" and out["stop_reason"] == stop
    assert _stream_text(stream(client, "/v1/completions", body))[0] == full[:idx]
    body["include_stop_str_in_output"] = True
    assert post(client, "/v1/completions", body)["choices"][0]["text"] == full[: idx + len(stop)]
    assert _stream_text(stream(client, "/v1/completions", body))[0] == full[: idx + len(stop)]


def test_stop_token_ids_and_eos(client, qwen_tokenizer):
    ref = post(client, "/v1/completions", {"prompt": "stop ids", "max_tokens": 8, "temperature": 0})
    ids = qwen_tokenizer.encode(ref["choices"][0]["text"])
    out = post(
        client,
        "/v1/completions",
        {"prompt": "stop ids", "max_tokens": 8, "temperature": 0, "stop_token_ids": [ids[2]]},
    )
    c = out["choices"][0]
    assert (
        c["finish_reason"] == "stop" and c["stop_reason"] == ids[2] and out["usage"]["completion_tokens"] == 3
    )
    eos_prompt = [100, 200, 7]  # the fake model emits EOS right after token 7
    c = post(client, "/v1/completions", {"prompt": eos_prompt, "max_tokens": 8, "temperature": 0})["choices"][
        0
    ]
    assert (c["finish_reason"], c["stop_reason"], c["text"]) == ("stop", None, "")
    body = {"prompt": eos_prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    out = post(client, "/v1/completions", body)
    assert out["choices"][0]["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 8
    assert EOS_ID not in qwen_tokenizer.encode(out["choices"][0]["text"])  # skip_special_tokens


# ---- chat --------------------------------------------------------------------------------------------
def test_chat_basic_and_stream(client, fake, qwen_tokenizer):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    body = {"model": MODEL, "messages": msgs, "max_completion_tokens": 9, "temperature": 0}
    out = post(client, "/v1/chat/completions", body)
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    (c,) = out["choices"]
    assert c["message"]["role"] == "assistant" and c["finish_reason"] == "length"
    prompt_ids = fake.requests_seen[-1][1]
    assert qwen_tokenizer.decode(prompt_ids) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    )
    assert out["usage"] == {
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": 9,
        "total_tokens": len(prompt_ids) + 9,
    }
    events = stream(client, "/v1/chat/completions", body)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    reasoning = "".join(e["choices"][0]["delta"].get("reasoning_content") or "" for e in events)
    assert text == (c["message"]["content"] or "") and reasoning == (c["message"]["reasoning_content"] or "")
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_chat_n_stream_equals_nonstream(client):
    body = {
        "messages": [{"role": "user", "content": "two"}],
        "max_tokens": 6,
        "n": 2,
        "temperature": 0.8,
        "seed": 3,
    }
    full = post(client, "/v1/chat/completions", body)
    assert [c["index"] for c in full["choices"]] == [0, 1] and full["usage"]["completion_tokens"] == 12
    texts: dict[int, str] = {}
    for e in stream(client, "/v1/chat/completions", body):
        for c in e["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + (c["delta"].get("content") or "")
    assert texts == {c["index"]: c["message"]["content"] for c in full["choices"]}


def test_chat_template_kwargs_tools_and_parts(client, fake, qwen_tokenizer):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    body = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Paris?"}],
            }
        ],
        "tools": tools,
        "tool_choice": "auto",
        "chat_template_kwargs": {"enable_thinking": False},
        "max_tokens": 2,
    }
    post(client, "/v1/chat/completions", body)
    prompt = qwen_tokenizer.decode(fake.requests_seen[-1][1])
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in prompt
    assert "<|im_start|>user\nWeather in Paris?<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert fake.requests_seen[-1][2].max_tokens == 2


def test_chat_default_max_tokens_fills_context(client, fake):
    post(
        client,
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "temperature": 0, "stop_token_ids": [1]},
    )
    _, ids, p = fake.requests_seen[-1]
    assert p.max_tokens == MAX_LEN - len(ids)


def test_chat_logprobs(client):
    body = {
        "messages": [{"role": "user", "content": "lp"}],
        "max_tokens": 3,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    c = post(client, "/v1/chat/completions", body)["choices"][0]
    content = c["logprobs"]["content"]
    assert len(content) == 3
    for entry in content:
        assert entry["logprob"] <= 0 and entry["bytes"] == list(entry["token"].encode())
        assert len(entry["top_logprobs"]) == 2
        assert entry["top_logprobs"][0]["logprob"] >= entry["top_logprobs"][1]["logprob"]
    events = stream(client, "/v1/chat/completions", body)
    streamed = [
        x
        for e in events
        if e["choices"] and e["choices"][0]["logprobs"]
        for x in e["choices"][0]["logprobs"]["content"]
    ]
    assert streamed == content


@pytest.mark.parametrize(
    "script, opened, reasoning, content",
    [
        ("<think>\nLet me think.\n</think>\n\nThe answer.", False, "Let me think.\n", "The answer."),
        ("Let me think.\n</think>\n\nThe answer.", True, "Let me think.\n", "The answer."),
        ("Still thinking when cut", True, "Still thinking when cut", None),
        ("Just an answer.", False, None, "Just an answer."),
    ],
)
def test_chat_reasoning_parser(client, fake, qwen_tokenizer, script, opened, reasoning, content):
    fake.script = qwen_tokenizer.encode(script)
    try:
        msgs = [{"role": "user", "content": "think"}]
        if opened:  # the template (here: a prefilled assistant turn) already opened <think>
            msgs.append({"role": "assistant", "content": "<think>\n"})
        body = {"messages": msgs, "max_tokens": 50, "temperature": 0}
        if opened:
            body.update(add_generation_prompt=False, continue_final_message=True)
        msg = post(client, "/v1/chat/completions", body)["choices"][0]["message"]
        assert (msg["reasoning_content"], msg["content"] or None) == (reasoning, content)
        events = stream(client, "/v1/chat/completions", body)
        deltas = [e["choices"][0]["delta"] for e in events]
        assert "".join(d.get("reasoning_content") or "" for d in deltas) == (reasoning or "")
        assert "".join(d.get("content") or "" for d in deltas) == (content or "")
        off = post(client, "/v1/chat/completions", {**body, "include_reasoning": False})["choices"][0][
            "message"
        ]
        assert off["reasoning_content"] is None and off["content"] == qwen_tokenizer.decode(fake.script)
    finally:
        fake.script = None


# ---- errors ------------------------------------------------------------------------------------------
LONG = list(range(1000, 1000 + MAX_LEN + 10))
BAD_REQUESTS = [
    ("/v1/completions", b"{not json", 400, "Invalid JSON"),
    ("/v1/completions", [1, 2], 400, "object"),
    ("/v1/completions", {"max_tokens": 3}, 400, "prompt"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"prompt": []}, 400, "prompt"),
    ("/v1/completions", {"prompt": [[1, 2], "a"]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1.5, 2]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [10**9]}, 400, "out of range"),
    ("/v1/completions", {"prompt": LONG}, 400, "maximum context length"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 10**6}, 400, "maximum context length"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": "hi", "top_p": 1.5}, 400, "top_p"),
    ("/v1/completions", {"prompt": "hi", "top_k": -2}, 400, "top_k"),
    ("/v1/completions", {"prompt": "hi", "min_p": 2}, 400, "min_p"),
    ("/v1/completions", {"prompt": "hi", "n": 0}, 400, "n"),
    ("/v1/completions", {"prompt": "hi", "n": 10**6}, 400, "n"),
    ("/v1/completions", {"prompt": "hi", "seed": 2**70}, 400, "seed"),
    ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", b'{"prompt": "hi", "top_p": NaN}', 400, "top_p"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 21}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "presence_penalty": 3}, 400, "presence_penalty"),
    ("/v1/completions", {"prompt": "hi", "repetition_penalty": 0}, 400, "repetition_penalty"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2, "min_tokens": 3}, 400, "min_tokens"),
    ("/v1/completions", {"prompt": "hi", "stop": [""]}, 400, "stop"),
    ("/v1/completions", {"prompt": "hi", "stop": 5}, 400, "stop"),
    ("/v1/completions", {"prompt": "hi", "stop_token_ids": [-1]}, 400, "stop_token_ids"),
    ("/v1/completions", {"prompt": "hi", "stop_token_ids": [10**9]}, 400, "stop_token_ids"),
    ("/v1/completions", {"prompt": "hi", "model": "gpt-9"}, 404, "does not exist"),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"5": 1.0}}, 400, "logit_bias"),
    ("/v1/completions", {"prompt": "hi", "suffix": "tail"}, 400, "suffix"),
    ("/v1/completions", {"prompt": "hi", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ("/v1/completions", {"prompt": "hi", "best_of": 3}, 400, "best_of"),
    ("/v1/completions", {"prompt": "hi", "echo": "loud"}, 400, "echo"),
    ("/v1/chat/completions", {"max_tokens": 3}, 400, "messages"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
    ("/v1/chat/completions", {"messages": [{"content": "x"}]}, 400, "role"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        400,
        "image_url",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
        400,
        "top_logprobs",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21},
        400,
        "logprobs",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}},
        400,
        "response_format",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": {"tokenize": True}},
        400,
        "chat_template_kwargs",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 10**6},
        400,
        "maximum context length",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "model": "nope"},
        404,
        "does not exist",
    ),
    ("/v1/chat/completions", {"messages": "hello"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": "all"}, 400, "tools"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "assistant", "tool_calls": [{"function": {"arguments": 1}}]}]},
        400,
        "chat template",
    ),
    ("/tokenize", {}, 400, "prompt"),
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "x"}]}, 400, "prompt"),
    ("/detokenize", {"tokens": [-1]}, 400, "tokens"),
    ("/detokenize", {"tokens": "abc"}, 400, "tokens"),
]


@pytest.mark.parametrize(
    "path, body, status, needle", BAD_REQUESTS, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD_REQUESTS)]
)
def test_malformed_requests(client, path, body, status, needle):
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle.lower() in err["message"].lower(), err
    assert err["code"] == status and isinstance(err["type"], str) and err["type"]


def test_unknown_route_and_method(client):
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and "no such route" in r.json()["error"]["message"]
    r = client.get("/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == 405


# ---- metrics -----------------------------------------------------------------------------------------
def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_metrics(client, fake):
    post(client, "/v1/completions", {"prompt": "metrics", "max_tokens": 3, "temperature": 0})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert _metric(text, name) >= 0
    assert _metric(text, "vllm:generation_tokens_total") == fake.generation_tokens_total
    assert _metric(text, "vllm:prompt_tokens_total") == fake.prompt_tokens_total
    for hist in (
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:request_time_per_output_token_seconds",
        "vllm:e2e_request_latency_seconds",
    ):
        assert _metric(text, hist + "_count") >= 1
    assert 'vllm:request_success_total{finished_reason="length",model_name="fake-model"}' in text


# ---- disconnects and overload ---------------------------------------------------------------------------
def _wait_idle(fake, timeout: float = 5.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = fake.stats()
        if s["num_running"] == 0 and s["num_waiting"] == 0 and s["kv_cache_usage"] == 0:
            return
        time.sleep(0.01)
    raise AssertionError(f"engine still busy: {fake.stats()}")


def test_stream_disconnect_aborts_and_frees_cache(server, fake):
    _wait_idle(fake)
    body = {
        "prompt": "long",
        "max_tokens": 200,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "request_id": "disc-1",
    }
    with (
        httpx.Client(base_url=server.url, timeout=30) as c,
        c.stream("POST", "/v1/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        assert fake.stats()["num_running"] == 1 and fake.stats()["kv_cache_usage"] > 0
    t0 = time.time()
    _wait_idle(fake)
    assert "disc-1-0" in fake.aborted and time.time() - t0 < 1.0


def test_nonstream_disconnect_aborts(server, fake):
    _wait_idle(fake)
    body = {"prompt": "long", "max_tokens": 200, "ignore_eos": True, "temperature": 0, "request_id": "disc-2"}
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=server.url, timeout=0.3) as c:
        c.post("/v1/completions", json=body)
    _wait_idle(fake, timeout=2.0)
    assert "disc-2-0" in fake.aborted


def test_overload_queues(qwen_tokenizer, qwen_tokenizer_dir):
    small = FakeEngine(qwen_tokenizer, str(qwen_tokenizer_dir), max_model_len=MAX_LEN, max_num_seqs=2)
    srv = ThreadServer(build_app(small, served_model_names=[MODEL]))
    try:
        results: list[int] = []

        def one(i: int) -> None:
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                r = c.post("/v1/completions", json={"prompt": f"q{i}", "max_tokens": 10, "temperature": 0})
                results.append(r.status_code)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * 6 and small.max_concurrent_seen == 2
    finally:
        srv.stop()


def test_health_reports_a_dead_engine(qwen_tokenizer, qwen_tokenizer_dir):
    eng = FakeEngine(qwen_tokenizer, str(qwen_tokenizer_dir), max_model_len=MAX_LEN)
    srv = ThreadServer(build_app(eng, served_model_names=[MODEL]))
    try:
        assert httpx.get(srv.url + "/health").status_code == 200
        eng.is_running, eng._error = False, RuntimeError("boom")
        r = httpx.get(srv.url + "/health")
        assert r.status_code == 503 and "not running" in r.json()["error"]["message"]
    finally:
        srv.stop()


# ---- API key -----------------------------------------------------------------------------------------------
def test_api_key(qwen_tokenizer, qwen_tokenizer_dir):
    eng = FakeEngine(qwen_tokenizer, str(qwen_tokenizer_dir), max_model_len=MAX_LEN)
    srv = ThreadServer(build_app(eng, served_model_names=[MODEL], api_key="s3cret"))
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            body = {"prompt": "key", "max_tokens": 3, "temperature": 0}
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                for method, path in (
                    ("GET", "/v1/models"),
                    ("POST", "/v1/completions"),
                    ("POST", "/v1/chat/completions"),
                ):
                    r = c.request(method, path, json=body if method == "POST" else None, headers=headers)
                    assert r.status_code == 401 and "api key" in r.json()["error"]["message"].lower()
            assert eng.requests_seen == []  # nothing reached the engine
            good = {"Authorization": "Bearer s3cret"}
            assert c.get("/v1/models", headers=good).status_code == 200
            r = c.post("/v1/completions", json=body, headers=good)
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
            assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200
    finally:
        srv.stop()
