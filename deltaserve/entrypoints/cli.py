"""`deltaserve` command line: `serve`, `generate` and `bench serve` (vLLM-style flags).

deltaserve serve [--model DIR] [--host H] [--port P] ...   # no --model: the embedded demo model
deltaserve generate [--model DIR] --prompt TEXT [--chat] ...
deltaserve bench serve --base-url http://127.0.0.1:8000 --num-prompts 100 ...
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

logger = logging.getLogger("deltaserve")

DEMO_MAX_MODEL_LEN = 4096


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint directory (default: the embedded demo model)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    p.add_argument(
        "--tensor-parallel-size",
        "-tp",
        type=int,
        default=1,
        help="GPUs per model (only 1 is supported so far)",
    )
    p.add_argument(
        "--max-model-len", type=int, default=None, help="context length (prompt + output) per request"
    )
    p.add_argument("--max-num-seqs", type=int, default=None, help="requests running at once (more queue)")
    p.add_argument("--max-num-batched-tokens", type=int, default=None, help="token budget per engine step")
    p.add_argument("--gpu-memory-utilization", type=float, default=None, help="fraction of GPU memory to use")
    p.add_argument("--dtype", default="auto", help="auto | bfloat16 | float16 | float32")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--seed", type=int, default=0, help="engine seed (requests without a seed)")
    p.add_argument(
        "--disable-overlap-schedule",
        action="store_true",
        help="process each decode step before launching the next (no host/device overlap)",
    )


def _engine_kwargs(args: argparse.Namespace, model: str) -> dict[str, Any]:
    kw: dict[str, Any] = {"model": model, "dtype": args.dtype, "device": args.device, "seed": args.seed}
    if args.enforce_eager:
        kw["enforce_eager"] = True
    if args.disable_overlap_schedule:
        kw["overlap_schedule"] = False
    for name in (
        "tokenizer",
        "max_model_len",
        "max_num_seqs",
        "max_num_batched_tokens",
        "gpu_memory_utilization",
    ):
        value = getattr(args, name)
        if value is not None:
            kw[name] = value
    return kw


def _resolve_model(args: argparse.Namespace) -> tuple[str, bool]:
    """(checkpoint dir, is_demo). Creates the demo model on first use."""
    if args.tensor_parallel_size != 1:
        raise SystemExit(
            f"error: --tensor-parallel-size {args.tensor_parallel_size} is not supported yet (only 1); "
            "for multi-GPU serving run the model inside vLLM or SGLang (see README)"
        )
    if args.model:
        return args.model, False
    from deltaserve.demo import RANDOM_WEIGHTS_WARNING, ensure_demo_model

    path = ensure_demo_model()
    logger.warning(RANDOM_WEIGHTS_WARNING)
    logger.warning("demo checkpoint: %s", path)
    if args.max_model_len is None:
        args.max_model_len = DEMO_MAX_MODEL_LEN
    return str(path), True


def _make_engine(args: argparse.Namespace, model: str):
    from deltaserve.engine.async_engine import AsyncEngine

    try:
        return AsyncEngine.from_config(**_engine_kwargs(args, model))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e


def cmd_serve(args: argparse.Namespace) -> None:
    from deltaserve.entrypoints.openai.api_server import build_app, run_server

    if args.enable_auto_tool_choice and args.tool_call_parser is None:
        raise SystemExit(
            "error: --enable-auto-tool-choice requires --tool-call-parser (hermes or qwen3_coder)"
        )
    model, is_demo = _resolve_model(args)
    engine = _make_engine(args, model)
    if args.served_model_name:
        names = args.served_model_name
    else:
        from deltaserve.demo import DEMO_SERVED_NAME

        names = [DEMO_SERVED_NAME] if is_demo else [args.model]
    try:
        app = build_app(
            engine,
            served_model_names=names,
            model_dir=model,
            reasoning_parser=args.reasoning_parser,
            tool_call_parser=args.tool_call_parser,
            enable_auto_tool_choice=args.enable_auto_tool_choice,
            api_key=args.api_key,
        )
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    if is_demo:
        logger.warning("serving the DEMO model (random weights) as %r", names[0])
    logger.info("serving %s as %s on http://%s:%d", model, names, args.host, args.port)
    run_server(app, args.host, args.port, log_level=args.uvicorn_log_level)


def cmd_generate(args: argparse.Namespace) -> None:
    from deltaserve.engine.sampling_params import SamplingParams

    model, _ = _resolve_model(args)
    engine = _make_engine(args, model)
    prompt = args.prompt
    if args.chat:
        prompt = engine.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    try:
        params = SamplingParams(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.sampling_seed,
        ).validate()
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e

    async def run() -> str:
        await engine.start()
        try:
            text = ""
            async for out in engine.generate(prompt, params, "generate-0"):
                text = out.outputs[0].text
            return text
        finally:
            await engine.shutdown()

    try:
        text = asyncio.run(run())
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    print(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deltaserve", description="Serve Qwen3-Next / Qwen3.5 models.")
    parser.add_argument("--log-level", default="info", help="debug | info | warning | error")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    serve.add_argument("model_tag", nargs="?", default=None, help="checkpoint directory (same as --model)")
    _add_engine_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 for all interfaces)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", nargs="+", default=None, help="model name(s) clients use")
    serve.add_argument(
        "--reasoning-parser", default=None, choices=["qwen3"], help="split <think> into reasoning"
    )
    serve.add_argument(
        "--enable-auto-tool-choice",
        action="store_true",
        help='let the model choose tool calls (tool_choice "auto"); needs --tool-call-parser',
    )
    serve.add_argument(
        "--tool-call-parser",
        default=None,
        choices=["hermes", "qwen3_coder"],  # = tool_parsers.TOOL_CALL_PARSERS (kept literal: lazy imports)
        help="tool-call format: hermes (JSON calls: Qwen3, Qwen3-Next) or qwen3_coder "
        "(XML <function=..> calls: Qwen3-Coder, Qwen3.5)",
    )
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 routes")
    serve.add_argument("--uvicorn-log-level", default="info")
    serve.set_defaults(func=cmd_serve)

    gen = sub.add_parser("generate", help="generate once from a prompt and print the text")
    _add_engine_args(gen)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--sampling-seed", type=int, default=None)
    gen.set_defaults(func=cmd_generate)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    from deltaserve.bench.serve import add_arguments, main_from_args

    bs = bench_sub.add_parser("serve", help="serving benchmark against a running server")
    add_arguments(bs)
    bs.set_defaults(func=main_from_args)

    doctor = sub.add_parser("doctor", help="check a host integration")
    doctor_sub = doctor.add_subparsers(dest="doctor_command", required=True)
    dsg = doctor_sub.add_parser(
        "sglang", help="which class SGLang resolves for each architecture with our external package"
    )
    dsg.set_defaults(func=cmd_doctor_sglang)
    return parser


def cmd_doctor_sglang(args: argparse.Namespace) -> None:
    from deltaserve.plugin.sglang.doctor import main as doctor_main

    raise SystemExit(doctor_main([]))


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "model_tag", None):
        if args.model and args.model != args.model_tag:
            parser.error("give the model once (positional or --model)")
        args.model = args.model_tag
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    args.func(args)


if __name__ == "__main__":
    main()
