"""Offline end-to-end benchmark of the standalone engine, with HF transformers in the same process.

    python -m deltaserve.bench.offline --model qwen3-next-80b-a3b --layers 8 --dtype bfloat16 \
        --batch 1,16 --input-len 128 --output-len 128 --json out.json
    python -m deltaserve.bench.offline --model /path/to/checkpoint --batch 1,16
    python -m deltaserve.bench.offline --model tiny:qwen3-next-a --device cpu --batch 1,4   # smoke test
    python -m deltaserve.bench.offline --model qwen3-next-80b-a3b --layers 8 --fp8 --batch 1   # block FP8

`--model` is a checkpoint directory, a named random-weight config at real widths
(`qwen3-next-80b-a3b`, with `--layers N` of its 48 layers) or `tiny:<preset>` (deltaserve.testing).
Random weights are drawn once (transformers' init) and copied into our model, so both engines run
the same weights. For each batch size B, B requests of `input-len` random token ids are submitted at
once with greedy decoding of exactly `output-len` tokens (ignore_eos). Reported: total and output
tok/s, TTFT and TPOT percentiles; HF `generate` on the same prompts gives the ratio; the batch-1
weight-read floor uses the bytes one decode token must read (non-expert weights, top-k experts per
MoE layer, lm_head) over the measured device copy bandwidth.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import platform
import random
import tempfile
import time
from pathlib import Path

import torch

REAL_CONFIGS = {
    "qwen3-next-80b-a3b": dict(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=5120,
        num_hidden_layers=48,
        num_attention_heads=16,
        num_key_value_heads=2,
        head_dim=256,
        linear_num_key_heads=16,
        linear_num_value_heads=32,
        linear_key_head_dim=128,
        linear_value_head_dim=128,
        linear_conv_kernel_dim=4,
        num_experts=512,
        num_experts_per_tok=10,
        moe_intermediate_size=512,
        shared_expert_intermediate_size=512,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        max_position_embeddings=262144,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000_000.0, "partial_rotary_factor": 0.25},
        bos_token_id=151643,
        eos_token_id=151645,
        hidden_act="silu",
    )
}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_random(name: str, layers: int | None, dtype: torch.dtype, device: str, workdir: Path):
    """HF model with random weights + a checkpoint-like dir (config.json, tokenizer) for our engine."""
    import transformers

    if name.startswith("tiny:"):
        if layers:
            raise ValueError("--layers: only for real-width configs")
        from deltaserve.testing import load_hf_model, write_checkpoint

        write_checkpoint(name[5:], workdir)
        return load_hf_model(workdir, dtype=dtype).to(device).eval(), workdir
    if name not in REAL_CONFIGS:
        raise ValueError(
            f"--model: {name!r} is not a directory, 'tiny:<preset>' or one of {sorted(REAL_CONFIGS)}"
        )
    kw = dict(REAL_CONFIGS[name])
    if layers:
        kw["num_hidden_layers"] = layers
    n = kw["num_hidden_layers"]
    kw["layer_types"] = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(n)]
    hf_config = transformers.Qwen3NextConfig(**kw)
    hf_config.architectures = ["Qwen3NextForCausalLM"]
    hf_config.save_pretrained(workdir)
    from deltaserve.testing.tokenizer import write_tokenizer

    write_tokenizer(workdir, hf_config.vocab_size)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            hf = transformers.Qwen3NextForCausalLM(hf_config)
    finally:
        torch.set_default_dtype(old)
    return hf.eval(), workdir


def our_model_from_hf(hf, config_dir: Path, dtype: torch.dtype, device: str, *, fp8: bool = False):
    """Our model with `hf`'s weights. `fp8`: the weights go through the official block-FP8 layout
    (quantised on the device, `quantization_config` added to `config_dir`) and load like an `-FP8`
    checkpoint would."""
    from deltaserve.models.config import ModelConfig
    from deltaserve.models.registry import model_class

    weights = ((n, p.detach()) for n, p in hf.named_parameters())
    if fp8:
        from deltaserve.testing.fp8 import official_fp8_tensors, quantization_config_for

        path = config_dir / "config.json"
        raw = json.loads(path.read_text())
        raw["quantization_config"] = quantization_config_for(n for n, _ in hf.named_parameters())
        path.write_text(json.dumps(raw, indent=2) + "\n")
        weights = official_fp8_tensors(hf.named_parameters())
    cfg = ModelConfig.from_hf(config_dir)
    with torch.device(device):
        model = model_class(cfg.architecture)(cfg, dtype=dtype, device=device)
    model.load_weights(weights)
    return model.eval()


def graphed_random_engine(
    workdir: Path, layers: int, *, max_model_len: int, max_num_seqs: int, fp8: bool = False
):
    """`(engine, model)`: real-width random Qwen3-Next (bf16, `layers` layers; `fp8`: its weights served
    as a block-FP8 checkpoint) in an engine with its CUDA decode graphs captured (the GPU probes'
    set-up; SystemExit naming the reason if capture failed)."""
    from deltaserve.config import EngineConfig
    from deltaserve.engine.core import LLMEngine

    hf, cfg_dir = build_random("qwen3-next-80b-a3b", layers, torch.bfloat16, "cuda", workdir)
    model = our_model_from_hf(hf, cfg_dir, torch.bfloat16, "cuda", fp8=fp8)
    del hf
    torch.cuda.empty_cache()
    config = EngineConfig.create(
        cfg_dir, device="cuda", dtype="bfloat16", max_model_len=max_model_len, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=2048, gpu_memory_utilization=0.9, enforce_eager=False, seed=0,
    )  # fmt: skip
    engine = LLMEngine(config, model=model)
    if engine.runner.graphs is None:
        raise SystemExit(f"no CUDA graphs: {engine.runner.graph_error}")
    return engine, model


def decode_bytes_per_token(model) -> int:
    """Weight bytes one batch-1 decode token reads: all but the embedding table and unused experts."""
    cfg = model.config
    total = 0
    for name, p in model.named_parameters():
        if "embed_tokens" in name and not cfg.tie_word_embeddings:
            continue  # one row is read, not the table
        b = p.numel() * p.element_size()
        if ".experts." in name:  # routed experts: top-k of num_experts are read per token
            b = b * cfg.num_experts_per_tok // max(1, cfg.num_experts)
        total += b
    return total


def copy_bandwidth(device: str) -> float:
    """Device copy bandwidth in bytes/s (read + write), from a 1 GiB copy."""
    x = torch.empty(1 << 29, dtype=torch.int16, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    return 2 * x.numel() * x.element_size() * 10 / (time.perf_counter() - t)


def run_ours(engine, prompts: list[list[int]], output_len: int) -> dict:
    from deltaserve.engine.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    t0 = time.time()
    for i, p in enumerate(prompts):
        engine.add_request(f"b{i}-{t0}", p, params)
    done = []
    while engine.has_unfinished_requests():
        done.extend(engine.step(only_finished=True))
    dur = time.time() - t0
    ttft = [(o.metrics.first_token_time - o.metrics.arrival_time) * 1e3 for o in done]
    tpot = [
        (o.metrics.finished_time - o.metrics.first_token_time) * 1e3 / max(1, len(o.outputs[0].token_ids) - 1)
        for o in done
    ]
    n_out = sum(len(o.outputs[0].token_ids) for o in done)
    n_in = sum(len(p) for p in prompts)
    return {
        "duration_s": dur,
        "output_tok_s": n_out / dur,
        "total_tok_s": (n_out + n_in) / dur,
        "ttft_ms": {"p50": _pct(ttft, 50), "p90": _pct(ttft, 90), "p99": _pct(ttft, 99)},
        "tpot_ms": {"p50": _pct(tpot, 50), "p90": _pct(tpot, 90), "p99": _pct(tpot, 99)},
        "tokens": [o.outputs[0].token_ids for o in done],
    }


@torch.no_grad()
def run_hf(hf, prompts: list[list[int]], output_len: int, device: str) -> dict:
    import copy

    cfg = copy.deepcopy(hf.generation_config)
    cfg.do_sample, cfg.eos_token_id, cfg.temperature, cfg.top_k, cfg.top_p = False, None, None, None, None
    cfg.max_new_tokens = cfg.min_new_tokens = output_len
    ids = torch.tensor(prompts, device=device)
    _sync(device)
    t0 = time.time()
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
    _sync(device)
    dur = time.time() - t0
    n_out = (out.shape[1] - ids.shape[1]) * ids.shape[0]
    return {"duration_s": dur, "output_tok_s": n_out / dur, "total_tok_s": (n_out + ids.numel()) / dur}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", default="1,16", help="comma-separated concurrencies")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    ap.add_argument(
        "--fp8",
        action="store_true",
        help="random configs: serve the weights as a block-FP8 checkpoint (quantised on load; no HF baseline)",
    )
    ap.add_argument("--hf-output-len", type=int, default=None, help="output length for HF (default: same)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--profile-steps",
        type=int,
        default=0,
        help="also profile this many real decode steps per batch size (CUDA): device busy time per step",
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.fp8 and Path(args.model).is_dir():
        ap.error("--fp8: only for random configs (a checkpoint directory brings its own quantization_config)")
    if args.fp8:
        args.no_hf = True  # transformers would run the bf16 weights: not the same model

    from deltaserve.config import EngineConfig
    from deltaserve.engine.core import LLMEngine

    dtype = {
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "float32": torch.float32,
    }[args.dtype]
    batches = [int(b) for b in args.batch.split(",")]
    torch.manual_seed(args.seed)
    tmp = contextlib.ExitStack()
    workdir = Path(tmp.enter_context(tempfile.TemporaryDirectory(prefix="ds-bench-")))
    t = time.perf_counter()
    is_dir = Path(args.model).is_dir()
    if is_dir:
        import transformers

        cfg_dir = Path(args.model)
        hf = None
        if not args.no_hf:
            hf = transformers.AutoModelForCausalLM.from_pretrained(
                cfg_dir, dtype=dtype, local_files_only=True
            )
            hf = hf.to(args.device).eval()
        model = None
    else:
        hf, cfg_dir = build_random(args.model, args.layers, dtype, args.device, workdir)
        model = our_model_from_hf(hf, cfg_dir, dtype, args.device, fp8=args.fp8)
    build_s = time.perf_counter() - t
    from deltaserve.models.config import ModelConfig

    vocab = ModelConfig.from_hf(cfg_dir).vocab_size
    rng = random.Random(args.seed)
    prompt_sets = {
        b: [[rng.randrange(10, min(vocab, 100000)) for _ in range(args.input_len)] for _ in range(b)]
        for b in batches
    }

    result: dict = {
        "bench": "offline",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__},
        "model": args.model,
        "layers": args.layers,
        "dtype": args.dtype,
        "fp8": args.fp8,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "enforce_eager": args.enforce_eager,
        "build_s": build_s,
        "runs": {},
    }
    try:
        import transformers
        import triton

        result["versions"].update(transformers=transformers.__version__, triton=triton.__version__)
    except Exception:
        pass

    hf_out_len = args.hf_output_len or args.output_len
    if hf is not None and not args.no_hf:
        run_hf(hf, prompt_sets[batches[0]][:1], 4, args.device)  # warm-up
        for b in batches:
            r = run_hf(hf, prompt_sets[b], hf_out_len, args.device)
            result["runs"].setdefault(str(b), {})["hf"] = r
            print(
                f"HF transformers  B={b:<3d} output {r['output_tok_s']:9.1f} tok/s  ({r['duration_s']:.2f} s)",
                flush=True,
            )
    if model is not None and hf is not None:
        del hf
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()

    config = EngineConfig.create(
        cfg_dir,
        device=args.device,
        dtype=args.dtype,
        max_model_len=args.input_len + args.output_len + 8,
        max_num_seqs=max(batches),
        max_num_batched_tokens=max(2048, args.input_len * max(batches))
        if args.device.startswith("cuda")
        else None,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=args.enforce_eager,
        seed=args.seed,
    )
    t = time.perf_counter()
    engine = LLMEngine(config, model=model)
    result["engine_init_s"] = time.perf_counter() - t
    result["cuda_graphs"] = engine.runner.graphs is not None
    result["cuda_graph_error"] = engine.runner.graph_error
    result["cache"] = {"num_slots": engine.runner.plan.num_slots, "num_blocks": engine.runner.plan.num_blocks}
    for b in batches:  # warm-up with each batch's own shapes (Triton specialisations, allocator)
        run_ours(engine, prompt_sets[b], 4)
    for b in batches:
        r = run_ours(engine, prompt_sets[b], args.output_len)
        r.pop("tokens")
        entry = result["runs"].setdefault(str(b), {})
        entry["deltaserve"] = r
        if "hf" in entry:
            entry["ratio_output_tok_s"] = r["output_tok_s"] / entry["hf"]["output_tok_s"]
        print(
            f"deltaserve       B={b:<3d} output {r['output_tok_s']:9.1f} tok/s  total {r['total_tok_s']:9.1f} tok/s  "
            f"TTFT p50 {r['ttft_ms']['p50']:.1f} ms  TPOT p50 {r['tpot_ms']['p50']:.2f} ms p99 {r['tpot_ms']['p99']:.2f} ms"
            + (f"  x{entry['ratio_output_tok_s']:.1f} vs HF" if "ratio_output_tok_s" in entry else ""),
            flush=True,
        )
    if engine.config.overlap_schedule:  # the same engine processing every step before the next (baseline)
        engine.config = dataclasses.replace(engine.config, overlap_schedule=False)
        for b in batches:
            r = run_ours(engine, prompt_sets[b], args.output_len)
            r.pop("tokens")
            entry = result["runs"][str(b)]
            entry["deltaserve_no_overlap"] = r
            print(
                f"  no overlap     B={b:<3d} output {r['output_tok_s']:9.1f} tok/s  "
                f"TPOT p50 {r['tpot_ms']['p50']:.2f} ms (overlap: {entry['deltaserve']['tpot_ms']['p50']:.2f} ms)",
                flush=True,
            )
        engine.config = dataclasses.replace(engine.config, overlap_schedule=True)
    graphs = engine.runner.graphs
    if graphs is not None:  # GPU time of one decode step alone, to separate host overhead from TPOT
        # A lower bound on a real step's GPU time: padding rows move no GDN state or KV, and their
        # hidden states route to fewer distinct experts (8-layer Qwen3-Next, B=16, H200: MoE 1.20 ms
        # per replay against 1.88 ms per real step). --profile-steps measures real steps.
        result["graph_replay_ms"] = {str(b): graphs.time_replay(b) for b in batches if graphs.fits(b)}
        for b, ms in result["graph_replay_ms"].items():
            tpot = result["runs"][b]["deltaserve"]["tpot_ms"]["p50"]
            print(
                f"decode graph replay B={b} (padding rows, a lower bound): {ms:.3f} ms GPU; TPOT {tpot:.3f} ms "
                f"-> {tpot - ms:.3f} ms host or GPU work the replay skips (--profile-steps separates them)"
            )
    if args.profile_steps and args.device.startswith("cuda"):
        # the replay runs on padding rows (no GDN state or KV traffic); real steps count everything
        from deltaserve.bench.step_profile import engine_step_profile

        result["step_profile"] = {}
        for b in batches:
            prof = engine_step_profile(engine, b, args.profile_steps, verbose=False)
            result["step_profile"][str(b)] = prof
            tpot = result["runs"][str(b)]["deltaserve"]["tpot_ms"]["p50"]
            print(
                f"real decode steps B={b}: device busy {prof['device_busy_ms_per_step']:.3f} ms/step; "
                f"TPOT {tpot:.3f} ms -> host-bound {tpot - prof['device_busy_ms_per_step']:.3f} ms"
            )
    if args.device.startswith("cuda"):
        bw = copy_bandwidth(args.device)
        nbytes = decode_bytes_per_token(engine.runner.model)
        floor_ms = nbytes / bw * 1e3
        result["floor"] = {
            "decode_bytes_per_token": nbytes,
            "copy_bw_bytes_s": bw,
            "batch1_floor_ms": floor_ms,
        }
        if "1" in result["runs"]:
            tpot = result["runs"]["1"]["deltaserve"]["tpot_ms"]["p50"]
            result["floor"]["batch1_tpot_over_floor"] = tpot / floor_ms
            print(
                f"batch-1 weight-read floor {floor_ms:.3f} ms/token (bw {bw / 1e12:.2f} TB/s); TPOT/floor = {tpot / floor_ms:.2f}x"
            )
    print(f"device: {result['device']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    tmp.close()
    return result


if __name__ == "__main__":
    main()
