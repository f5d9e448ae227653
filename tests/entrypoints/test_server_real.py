"""`deltaserve serve` (no --model: the demo model) in a subprocess with the real engine, driven by the
official `openai` client, raw HTTP, `deltaserve bench serve` and `lm_eval --model local-completions`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deltaserve.demo import DEMO_SERVED_NAME

REPO = Path(__file__).resolve().parents[2]
TASK_DIR = Path(__file__).resolve().parent / "lm_eval_task"
MAX_LEN = 512


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_env(demo_model_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DELTASERVE_CACHE_DIR=str(demo_model_dir.parent),  # the session's demo checkpoint, already created
        DELTASERVE_CPU_CACHE_GIB="0.05",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="2",
    )
    return env


@pytest.fixture(scope="module")
def server(server_env, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    cmd = [sys.executable, "-m", "deltaserve", "serve", "--port", str(port), "--max-model-len", str(MAX_LEN)]
    cmd += ["--max-num-seqs", "4", "--reasoning-parser", "qwen3", "--uvicorn-log-level", "warning"]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=server_env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{log.read_text()}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"server did not come up:\n{log.read_text()}")
            time.sleep(0.25)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def oai(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=120)


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(name)


def test_startup_log_says_weights_are_random(server):
    text = server[1].read_text()
    assert "RANDOM" in text and "demo" in text.lower()


def test_openai_client(oai):
    assert [m.id for m in oai.models.list().data] == [DEMO_SERVED_NAME]
    c = oai.completions.create(
        model=DEMO_SERVED_NAME, prompt="Hello, my name is", max_tokens=6, temperature=0
    )
    assert c.choices[0].finish_reason in ("length", "stop") and c.usage.completion_tokens <= 6
    assert c.usage.prompt_tokens == 5
    chat = oai.chat.completions.create(
        model=DEMO_SERVED_NAME, messages=[{"role": "user", "content": "Hi!"}], max_tokens=6, temperature=0
    )
    msg = chat.choices[0].message
    assert msg.role == "assistant" and chat.usage.completion_tokens <= 6
    # greedy: streamed chunks add up to the non-streamed answer
    chunks = list(
        oai.chat.completions.create(
            model=DEMO_SERVED_NAME,
            messages=[{"role": "user", "content": "Hi!"}],
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join((ch.choices[0].delta.content or "") for ch in chunks if ch.choices)
    reasoning = "".join(
        (getattr(ch.choices[0].delta, "reasoning_content", None) or "") for ch in chunks if ch.choices
    )
    assert text == (msg.content or "") and reasoning == (getattr(msg, "reasoning_content", None) or "")
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    streamed = list(
        oai.completions.create(
            model=DEMO_SERVED_NAME, prompt="Hello, my name is", max_tokens=6, temperature=0, stream=True
        )
    )
    assert "".join(ch.choices[0].text for ch in streamed) == c.choices[0].text


def test_real_engine_echo_prompt_logprobs(server):
    """Prompt logprobs (prefill rows) agree with the sampled-token logprob of the same distribution,
    in OpenAI's legacy format, streamed or not, and with max_tokens=0 (echo only)."""
    url = server[0] + "/v1/completions"
    head = [9707, 11, 847, 829, 374, 264, 1273]
    first = httpx.post(
        url, json={"prompt": head, "max_tokens": 1, "temperature": 0, "logprobs": 2}, timeout=120
    ).json()["choices"][0]["logprobs"]
    prompt = head + [head[1]]
    body = {"prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 2, "echo": True}
    c = httpx.post(url, json=body, timeout=120).json()["choices"][0]
    lp = c["logprobs"]
    n = len(prompt)
    assert len(lp["tokens"]) == n + 1 and c["text"].startswith("".join(lp["tokens"][:n]))
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(isinstance(x, float) and x <= 0 for x in lp["token_logprobs"][1:])
    for top, tok, val in zip(lp["top_logprobs"][1:], lp["tokens"][1:], lp["token_logprobs"][1:]):
        assert 1 <= len(top) <= 3 and top[tok] == val and max(top.values()) >= val
    offsets = lp["text_offset"]
    assert offsets[0] == 0 and all(o2 - o1 == len(t) for o1, o2, t in zip(offsets, offsets[1:], lp["tokens"]))
    # the last prompt token's top-1 is `head`'s greedy continuation: one distribution, two code paths
    assert max(lp["top_logprobs"][n - 1].values()) == pytest.approx(first["token_logprobs"][0], abs=1e-4)
    echo_only = httpx.post(url, json={**body, "max_tokens": 0}, timeout=120).json()
    e = echo_only["choices"][0]
    assert len(e["logprobs"]["tokens"]) == n and e["logprobs"]["token_logprobs"] == lp["token_logprobs"][:n]
    assert e["text"] == "".join(e["logprobs"]["tokens"]) and e["logprobs"]["tokens"] == lp["tokens"][:n]
    assert echo_only["usage"]["completion_tokens"] == 0
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=120) as r:
        events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
    streamed = [t for ev in events for t in ev["choices"][0]["logprobs"]["token_logprobs"]]
    assert streamed == lp["token_logprobs"]


def test_real_engine_stream_equality_n_and_stop(server):
    url = server[0]
    with httpx.Client(base_url=url, timeout=120) as client:
        body = {
            "prompt": ["The sea at night", "A robot"],
            "max_tokens": 8,
            "temperature": 0,
            "n": 2,
            "logprobs": 0,
        }
        full = client.post("/v1/completions", json=body).json()
        assert [c["index"] for c in full["choices"]] == [0, 1, 2, 3]
        assert full["choices"][0]["text"] == full["choices"][1]["text"]  # greedy n=2
        texts: dict[int, str] = {}
        with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    for ch in json.loads(line[6:])["choices"]:
                        texts[ch["index"]] = texts.get(ch["index"], "") + ch["text"]
        assert texts == {c["index"]: c["text"] for c in full["choices"]}
        # a stop string spanning two generated tokens
        tokens = full["choices"][0]["logprobs"]["tokens"]
        k = next(
            (k for k in range(1, len(tokens) - 1) if len(tokens[k]) >= 2 and len(tokens[k + 1]) >= 2), None
        )
        if k is None:
            pytest.skip(f"no two adjacent multi-char tokens in {tokens}")
        stop = tokens[k][-1:] + tokens[k + 1][:1]
        ref = full["choices"][0]["text"]
        out = client.post(
            "/v1/completions",
            json={"prompt": "The sea at night", "max_tokens": 8, "temperature": 0, "stop": stop},
        ).json()["choices"][0]
        assert out["text"] == ref[: ref.index(stop)] and out["finish_reason"] == "stop"


def test_real_engine_disconnect_frees_cache(server):
    url = server[0]
    body = {
        "prompt": "Once upon a time",
        "max_tokens": 400,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }
    with httpx.Client(base_url=url, timeout=120) as c, c.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()  # read with next(): leaving a for-loop over it would close the connection
        while not next(lines).startswith("data: {"):
            pass
        assert _metric(url, "vllm:num_requests_running") == 1
        assert _metric(url, "vllm:kv_cache_usage_perc") > 0
    deadline = time.time() + 10
    while time.time() < deadline:
        if _metric(url, "vllm:num_requests_running") == 0 and _metric(url, "vllm:kv_cache_usage_perc") == 0:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("request still running after the client disconnected")
    assert _metric(url, "vllm:generation_tokens_total") < 300  # stopped long before max_tokens


def test_real_engine_overload_queues(server):
    """More concurrent requests than --max-num-seqs (4): the extra ones wait, none fails."""
    import threading

    codes: list[int] = []

    def one(i: int) -> None:
        r = httpx.post(server[0] + "/v1/completions", json={"prompt": f"q{i}", "max_tokens": 4}, timeout=120)
        codes.append(r.status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 10


def test_bench_serve(server, server_env):
    cmd = [
        sys.executable,
        "-m",
        "deltaserve",
        "bench",
        "serve",
        "--base-url",
        server[0],
        "--num-prompts",
        "4",
    ]
    cmd += ["--random-input-len", "16", "--random-output-len", "4", "--random-range-ratio", "0.5"]
    cmd += ["--max-concurrency", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=server_env, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "============ Serving Benchmark Result ============" in text
    assert "Successful requests:                     4" in text
    for key in (
        "Mean TTFT (ms):",
        "Median TPOT (ms):",
        "P99 ITL (ms):",
        "Mean E2EL (ms):",
        "Request throughput",
    ):
        assert key in text


def test_lm_eval_local_completions(server, server_env, tmp_path):
    pytest.importorskip("lm_eval", reason="lm_eval not installed (pip install 'lm-eval[api]')")
    base = server[0]
    model_args = f"model={DEMO_SERVED_NAME},base_url={base}/v1/completions,num_concurrent=2,max_retries=1"
    cmd = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args]
    cmd += ["--tasks", "deltaserve_tiny", "--include_path", str(TASK_DIR), "--output_path", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=server_env, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = list(tmp_path.rglob("results_*.json"))
    assert results, out.stdout[-2000:]
    data = json.loads(results[0].read_text())
    score = data["results"]["deltaserve_tiny"]["exact_match,none"]
    assert 0.0 <= score <= 1.0
    assert data["n-samples"]["deltaserve_tiny"]["effective"] == 6


def test_lm_eval_loglikelihood_multiple_choice(server, server_env, tmp_path):
    """lm_eval's loglikelihood requests (echo, logprobs=1, max_tokens=1, token-id prompts)."""
    pytest.importorskip("lm_eval", reason="lm_eval not installed (pip install 'lm-eval[api]')")
    base = server[0]
    model_args = f"model={DEMO_SERVED_NAME},base_url={base}/v1/completions,num_concurrent=2,max_retries=1"
    cmd = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args]
    cmd += ["--tasks", "deltaserve_tiny_mc", "--include_path", str(TASK_DIR), "--output_path", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=server_env, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = list(tmp_path.rglob("results_*.json"))
    assert results, out.stdout[-2000:]
    data = json.loads(results[0].read_text())
    for metric in ("acc,none", "acc_norm,none"):
        assert 0.0 <= data["results"]["deltaserve_tiny_mc"][metric] <= 1.0
    assert data["n-samples"]["deltaserve_tiny_mc"]["effective"] == 4
