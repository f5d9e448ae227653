"""`deltaserve` CLI: flags, errors, `generate` on the demo model, and the bench client's result block."""

from __future__ import annotations

import argparse
import logging

import pytest

from deltaserve.bench.serve import RequestResult, format_result, summarize
from deltaserve.entrypoints.cli import _engine_kwargs, build_parser, main


def test_serve_flags_map_to_engine_kwargs():
    args = build_parser().parse_args(
        "serve --model /m --host 0.0.0.0 --port 9000 --served-model-name a b --tensor-parallel-size 1 "
        "--max-model-len 1024 --max-num-seqs 8 --max-num-batched-tokens 512 --gpu-memory-utilization 0.5 "
        "--dtype bfloat16 --device cpu --enforce-eager --reasoning-parser qwen3 --api-key k --seed 3 "
        "--disable-overlap-schedule".split()
    )
    assert (args.host, args.port, args.served_model_name, args.api_key) == ("0.0.0.0", 9000, ["a", "b"], "k")
    assert args.reasoning_parser == "qwen3"
    assert _engine_kwargs(args, "/m") == {
        "model": "/m",
        "dtype": "bfloat16",
        "device": "cpu",
        "seed": 3,
        "enforce_eager": True,
        "overlap_schedule": False,
        "max_model_len": 1024,
        "max_num_seqs": 8,
        "max_num_batched_tokens": 512,
        "gpu_memory_utilization": 0.5,
    }
    bare = build_parser().parse_args(["serve"])
    assert bare.model is None and bare.host == "127.0.0.1" and bare.port == 8000


def test_tensor_parallel_is_refused_clearly():
    with pytest.raises(SystemExit, match="tensor-parallel-size 2 is not supported"):
        main(["serve", "--model", "/nowhere", "--tensor-parallel-size", "2"])


def test_bad_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="not a checkpoint directory"):
        main(["serve", "--model", str(tmp_path)])
    with pytest.raises(SystemExit):  # argparse: not a choice
        main(["serve", "--reasoning-parser", "deepseek"])


def test_generate_on_demo_model(demo_model_dir, monkeypatch, capsys, caplog):
    monkeypatch.setenv("DELTASERVE_CACHE_DIR", str(demo_model_dir.parent))
    monkeypatch.setenv("DELTASERVE_CPU_CACHE_GIB", "0.05")
    with caplog.at_level(logging.WARNING, logger="deltaserve"):
        main(["generate", "--prompt", "Hello, my name is", "--max-tokens", "4", "--max-model-len", "256"])
    text = capsys.readouterr().out
    assert text.strip()  # random weights: some text, no meaning
    assert any("RANDOM" in r.getMessage() for r in caplog.records)


def _bench_args(**kw) -> argparse.Namespace:
    base = {
        "max_concurrency": 2,
        "request_rate": float("inf"),
        "input_len": 16,
        "output_len": 4,
        "range_ratio": 0.0,
    }
    return argparse.Namespace(**{**base, **kw})


def test_bench_summary_math_and_block():
    ok1 = RequestResult(
        prompt_len=10, output_len=5, ttft=0.1, latency=0.5, itl=[0.1, 0.1, 0.1, 0.1], success=True
    )
    ok2 = RequestResult(prompt_len=20, output_len=3, ttft=0.3, latency=0.7, itl=[0.2, 0.2], success=True)
    bad = RequestResult(prompt_len=5, error="HTTP 500")
    res = summarize(_bench_args(), "m", [ok1, ok2, bad], duration=2.0, peak=2)
    assert (res["completed"], res["failed"], res["total_input_tokens"], res["total_output_tokens"]) == (
        2,
        1,
        30,
        8,
    )
    assert res["request_throughput"] == pytest.approx(1.0)
    assert res["output_throughput"] == pytest.approx(4.0)
    assert res["total_token_throughput"] == pytest.approx(19.0)
    assert res["mean_ttft_ms"] == pytest.approx(200.0) and res["median_e2el_ms"] == pytest.approx(600.0)
    assert res["mean_tpot_ms"] == pytest.approx((100.0 + 200.0) / 2)  # (0.5-0.1)/4 and (0.7-0.3)/2
    assert res["mean_itl_ms"] == pytest.approx(800.0 / 6)
    block = format_result(res).splitlines()
    assert block[0] == "============ Serving Benchmark Result ============" and block[-1] == "=" * 50
    assert "Successful requests:                     2         " in block
    assert "---------------Time to First Token----------------" in block
    for name in ("TTFT", "TPOT", "ITL", "E2EL"):
        assert any(line.startswith(f"P99 {name} (ms):") for line in block)


def test_bench_rejects_bad_arguments():
    with pytest.raises(SystemExit, match="range-ratio"):
        main(["bench", "serve", "--random-range-ratio", "1.5"])
    with pytest.raises(SystemExit, match="num-prompts"):
        main(["bench", "serve", "--num-prompts", "0"])
