"""Serving benchmark end to end: make a checkpoint, start `deltaserve serve`, run `bench serve`, write JSON.

    python -m deltaserve.bench.serve_suite --model qwen3-next-80b-a3b --layers 4 --json out.json
    python -m deltaserve.bench.serve_suite --model demo --device cpu --num-prompts 8 --input-len 32 \
        --output-len 8 --json out.json                                       # CPU smoke test

`--model`: a checkpoint directory, `demo` (the embedded demo model) or a named real-width random config
of `deltaserve.bench.offline` (`qwen3-next-80b-a3b`, `--layers N` of its 48 layers), written with the
real Qwen tokenizer. This is what `scripts/gpu-suite` runs on an H100.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deltaserve.bench.serve import format_result, run_benchmark


def write_random_checkpoint(name: str, layers: int | None, out: Path, device: str) -> Path:
    """A real-width random checkpoint (bf16 safetensors via save_pretrained) with the real Qwen tokenizer."""
    import torch

    from deltaserve.bench.offline import build_random
    from deltaserve.demo import write_qwen_tokenizer

    hf, _ = build_random(name, layers, torch.bfloat16, device, out)
    hf.save_pretrained(str(out))
    del hf
    for stale in ("vocab.json", "merges.txt"):
        (out / stale).unlink(missing_ok=True)
    write_qwen_tokenizer(out)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> float:
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not healthy after {timeout}s:\n{log.read_text()[-4000:]}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m deltaserve.bench.serve_suite", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", default="qwen3-next-80b-a3b")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=1024)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--range-ratio", type=float, default=0.0)
    p.add_argument("--max-concurrency", type=int, default=16)
    p.add_argument("--request-rate", type=float, default=float("inf"))
    p.add_argument("--startup-timeout", type=float, default=900.0)
    p.add_argument(
        "--workdir", default=None, help="where to write the random checkpoint (default: a temp dir)"
    )
    p.add_argument("--json", default=None, help="write the result (with card and versions) here")
    args = p.parse_args(argv)

    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    card = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    tmp = tempfile.TemporaryDirectory(prefix="deltaserve-serve-suite-", dir=args.workdir)
    work = Path(tmp.name)
    serve_args: list[str] = []
    t0 = time.perf_counter()
    if args.model == "demo":
        pass  # `deltaserve serve` without --model
    elif Path(args.model).is_dir():
        serve_args = ["--model", args.model]
    else:
        ckpt = write_random_checkpoint(args.model, args.layers, work / "ckpt", device)
        serve_args = ["--model", str(ckpt)]
    make_s = time.perf_counter() - t0

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = work / "serve.log"
    cmd = [sys.executable, "-m", "deltaserve", "serve", *serve_args, "--port", str(port), "--device", device]
    cmd += ["--max-model-len", str(args.max_model_len), "--max-num-seqs", str(args.max_num_seqs)]
    cmd += ["--served-model-name", "bench", "--uvicorn-log-level", "warning"]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        startup_s = _wait_healthy(url, proc, log, args.startup_timeout)
        import asyncio

        bench = argparse.Namespace(
            base_url=url,
            host=None,
            port=None,
            endpoint="/v1/completions",
            model="bench",
            api_key=None,
            input_len=args.input_len,
            output_len=args.output_len,
            range_ratio=args.range_ratio,
            num_prompts=args.num_prompts,
            max_concurrency=args.max_concurrency,
            request_rate=args.request_rate,
            seed=0,
            temperature=0.0,
            ignore_eos=True,
            num_warmups=min(2, args.num_prompts),
            timeout=600.0,
        )
        res = asyncio.run(run_benchmark(bench))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(format_result(res))
    out = {
        "card": card,
        "device": device,
        "torch": torch.__version__,
        "model": args.model,
        "layers": args.layers if args.model not in ("demo",) and not Path(args.model).is_dir() else None,
        "checkpoint_write_s": make_s,
        "server_startup_s": startup_s,
        "result": res,
        "server_log_tail": log.read_text()[-2000:],
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    tmp.cleanup()
    if res["failed"]:
        raise SystemExit(f"{res['failed']} requests failed: {res['errors'][:3]}")
    return out


if __name__ == "__main__":
    main()
