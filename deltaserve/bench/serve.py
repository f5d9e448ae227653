"""`deltaserve bench serve`: a serving benchmark client (vLLM's `bench serve` method and output block).

Sends `--num-prompts` streamed /v1/completions requests of random token ids (input length drawn
uniformly from `[L*(1-r), L*(1+r)]` for `--random-input-len L`, `--random-range-ratio r`; same for
the output length, forced with `ignore_eos`), at `--request-rate` (Poisson arrivals, default inf)
with at most `--max-concurrency` in flight, then prints the "Serving Benchmark Result" block:

- TTFT: request sent -> first streamed text; E2EL: request sent -> last byte.
- TPOT per request: (E2EL - TTFT) / (output tokens - 1); ITL: every gap between streamed chunks.
- Throughput: completed requests / duration; output tok/s; total tok/s also counts input tokens.
Output token counts come from the server's `usage` (stream_options.include_usage).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field

import numpy as np

# Ordinary word tokens of the Qwen vocabulary (ids below the added tokens of every Qwen tokenizer).
DEFAULT_TOKEN_RANGE = (1000, 100000)


@dataclass
class RequestResult:
    prompt_len: int
    output_len: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    success: bool = False
    error: str = ""
    start: float = 0.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", default=None, help="server URL (default http://HOST:PORT)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--endpoint", default="/v1/completions")
    p.add_argument("--model", default=None, help="model name (default: the server's first model)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--dataset-name", default="random", choices=["random"])
    p.add_argument("--random-input-len", "--input-len", dest="input_len", type=int, default=1024)
    p.add_argument("--random-output-len", "--output-len", dest="output_len", type=int, default=128)
    p.add_argument("--random-range-ratio", "--range-ratio", dest="range_ratio", type=float, default=0.0)
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument(
        "--request-rate", type=float, default=float("inf"), help="requests/s (Poisson); inf: all at once"
    )
    p.add_argument(
        "--token-range",
        type=int,
        nargs=2,
        default=list(DEFAULT_TOKEN_RANGE),
        metavar=("LO", "HI"),
        help="random prompt token ids are drawn from [LO, HI) (default: ordinary Qwen word tokens)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false", help="stop at EOS")
    p.add_argument("--num-warmups", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds")
    p.add_argument("--save-result", action="store_true")
    p.add_argument("--result-file", default=None, help="JSON path (default: a name with the date)")


def _check(args: argparse.Namespace) -> None:
    for name in ("input_len", "output_len", "num_prompts"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1")
    if not 0.0 <= args.range_ratio < 1.0:
        raise SystemExit("error: --random-range-ratio must be in [0, 1)")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise SystemExit("error: --max-concurrency must be >= 1")
    lo, hi = args.token_range
    if not 0 <= lo < hi:
        raise SystemExit("error: --token-range needs 0 <= LO < HI")
    if not args.request_rate > 0:
        raise SystemExit("error: --request-rate must be > 0")


def random_requests(args: argparse.Namespace) -> list[tuple[list[int], int]]:
    """(prompt token ids, output length) per request, from `--seed`."""
    rng = random.Random(args.seed)

    def length(mean: int) -> int:
        lo, hi = max(1, int(mean * (1 - args.range_ratio))), max(1, int(mean * (1 + args.range_ratio)))
        return rng.randint(lo, hi)

    lo, hi = getattr(args, "token_range", DEFAULT_TOKEN_RANGE)
    out = []
    for _ in range(args.num_prompts):
        n_in, n_out = length(args.input_len), length(args.output_len)
        out.append(([rng.randrange(lo, hi) for _ in range(n_in)], n_out))
    return out


async def _one(client, url: str, headers: dict, body: dict, prompt_len: int, timeout: float) -> RequestResult:
    res = RequestResult(prompt_len=prompt_len)
    start = time.perf_counter()
    res.start = start
    last = start
    try:
        async with client.stream("POST", url, json=body, headers=headers, timeout=timeout) as r:
            if r.status_code != 200:
                res.error = f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:200]}"
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    res.error = chunk["error"].get("message", "error")
                    return res
                now = time.perf_counter()
                if chunk.get("usage"):
                    res.output_len = chunk["usage"]["completion_tokens"]
                choices = chunk.get("choices") or []
                if choices and (choices[0].get("text") or choices[0].get("delta", {}).get("content")):
                    if res.ttft == 0.0:
                        res.ttft = now - start
                    else:
                        res.itl.append(now - last)
                    last = now
        res.latency = time.perf_counter() - start
        res.success = True
    except Exception as e:  # network errors count as failed requests
        res.error = f"{type(e).__name__}: {e}"
    return res


async def run_benchmark(args: argparse.Namespace) -> dict:
    import httpx

    base = (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits, timeout=args.timeout) as client:
        model = args.model
        if model is None:
            r = await client.get(f"{base}/v1/models", headers=headers)
            r.raise_for_status()
            model = r.json()["data"][0]["id"]
        requests = random_requests(args)
        url = base + args.endpoint

        def body(prompt: list[int], n_out: int) -> dict:
            return {
                "model": model,
                "prompt": prompt,
                "max_tokens": n_out,
                "temperature": args.temperature,
                "ignore_eos": args.ignore_eos,
                "stream": True,
                "stream_options": {"include_usage": True},
            }

        for prompt, n_out in requests[: args.num_warmups]:
            await _one(client, url, headers, body(prompt, n_out), len(prompt), args.timeout)

        sem = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
        rng = np.random.default_rng(args.seed)
        in_flight = 0
        peak = 0

        async def limited(prompt: list[int], n_out: int) -> RequestResult:
            nonlocal in_flight, peak
            if sem is not None:
                await sem.acquire()
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await _one(client, url, headers, body(prompt, n_out), len(prompt), args.timeout)
            finally:
                in_flight -= 1
                if sem is not None:
                    sem.release()

        t0 = time.perf_counter()
        tasks = []
        for prompt, n_out in requests:
            tasks.append(asyncio.create_task(limited(prompt, n_out)))
            if args.request_rate != float("inf"):
                await asyncio.sleep(float(rng.exponential(1.0 / args.request_rate)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
    return summarize(args, model, results, duration, peak)


def _stats(values: list[float], name: str, unit_scale: float = 1000.0) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64) * unit_scale if values else np.zeros(1)
    return {
        f"mean_{name}_ms": float(arr.mean()),
        f"median_{name}_ms": float(np.median(arr)),
        f"std_{name}_ms": float(arr.std()),
        f"p99_{name}_ms": float(np.percentile(arr, 99)),
    }


def summarize(
    args: argparse.Namespace, model: str, results: list[RequestResult], duration: float, peak: int
) -> dict:
    ok = [r for r in results if r.success]
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_len for r in ok)
    tpots = [(r.latency - r.ttft) / (r.output_len - 1) for r in ok if r.output_len > 1]
    itls = [x for r in ok for x in r.itl]
    out = {
        "date": time.strftime("%Y%m%d-%H%M%S"),
        "model": model,
        "num_prompts": len(results),
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": [r.error for r in results if not r.success][:10],
        "max_concurrency": args.max_concurrency,
        "request_rate": args.request_rate,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "range_ratio": args.range_ratio,
        "duration": duration,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration,
        "output_throughput": total_out / duration,
        "total_token_throughput": (total_in + total_out) / duration,
        "peak_concurrent_requests": peak,
    }
    out.update(_stats([r.ttft for r in ok], "ttft"))
    out.update(_stats(tpots, "tpot"))
    out.update(_stats(itls, "itl"))
    out.update(_stats([r.latency for r in ok], "e2el"))
    return out


def format_result(res: dict) -> str:
    """vLLM's "Serving Benchmark Result" block."""
    lines = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="=")]

    def row(label: str, value: object, fmt: str = "") -> None:
        lines.append(f"{label:<40} {value:<10{fmt}}")

    row("Successful requests:", res["completed"])
    if res["failed"]:
        row("Failed requests:", res["failed"])
    row("Maximum request concurrency:", res["max_concurrency"] if res["max_concurrency"] else "None")
    row("Request rate configured (RPS):", res["request_rate"], ".2f")
    row("Benchmark duration (s):", res["duration"], ".2f")
    row("Total input tokens:", res["total_input_tokens"])
    row("Total generated tokens:", res["total_output_tokens"])
    row("Request throughput (req/s):", res["request_throughput"], ".2f")
    row("Output token throughput (tok/s):", res["output_throughput"], ".2f")
    row("Peak concurrent requests:", res["peak_concurrent_requests"])
    row("Total Token throughput (tok/s):", res["total_token_throughput"], ".2f")
    for title, key, name in (
        ("Time to First Token", "ttft", "TTFT"),
        ("Time per Output Token (excl. 1st token)", "tpot", "TPOT"),
        ("Inter-token Latency", "itl", "ITL"),
        ("End-to-end Latency", "e2el", "E2EL"),
    ):
        lines.append("{s:{c}^{n}}".format(s=title, n=50, c="-"))
        row(f"Mean {name} (ms):", res[f"mean_{key}_ms"], ".2f")
        row(f"Median {name} (ms):", res[f"median_{key}_ms"], ".2f")
        row(f"P99 {name} (ms):", res[f"p99_{key}_ms"], ".2f")
    lines.append("=" * 50)
    return "\n".join(lines)


def main_from_args(args: argparse.Namespace) -> dict:
    _check(args)
    res = asyncio.run(run_benchmark(args))
    print(format_result(res))
    for err in res["errors"]:
        print(f"error: {err}", file=sys.stderr)
    if args.save_result or args.result_file:
        path = args.result_file or f"deltaserve-bench-serve-{res['date']}.json"
        with open(path, "w") as f:
            json.dump(
                {**res, "args": {k: v for k, v in vars(args).items() if k != "func"}},
                f,
                indent=2,
                default=str,
            )
        print(f"saved {path}")
    if res["failed"]:
        raise SystemExit(1)
    return res


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="deltaserve bench serve", description=__doc__.split("\n")[0])
    add_arguments(parser)
    main_from_args(parser.parse_args(argv))


__all__ = ["RequestResult", "add_arguments", "format_result", "main", "main_from_args", "run_benchmark"]
