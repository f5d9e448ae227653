"""Host (Python) cost of one engine decode step, per phase, at several batch sizes (CPU-runnable).

    python scripts/host_step_profile.py                       # B = 1, 16, 64; greedy and sampled
    python scripts/host_step_profile.py --batch 16 --mode greedy --cprofile 25

A tiny checkpoint's engine runs on the CPU with the model replaced by a stub (no forward compute),
and decode steps go through `DecodeGraphs.run` with a stub graph (its host staging is real; the
replay only writes stub logits), so what is timed is the host work the CUDA-graph engine does
around each replay: scheduling, input preparation, sampling (`SamplingBatch.build`, `sample`, the
device->host copy) and output processing (detokenization, stop checks, outputs).

The stub logits put one token far ahead, drawn from `--tokens`: `text` ids of the tokenizer's
byte/merge vocabulary (realistic detokenization) or `notext` ids past the tokenizer (what the
random-weight `deltaserve.bench.offline` run samples: ids that decode to nothing). Requests are
submitted like the offline benchmark: B prompts of `--input-len` ids, `max_tokens=--output-len`,
`ignore_eos`, `engine.step(only_finished=True)` (`--stream`: `engine.step()`, building every
request's cumulative output each step, as the server's streaming loop does). Numbers are microseconds per decode step (mean over
the all-decode steps of a run; each phase's best of `--repeat` runs, so the columns need not add up)
on this machine's CPU. On the CPU, "sample" also holds the sampling ops' compute (kernels on a GPU).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import time
from collections import defaultdict

import torch

from deltaserve.config import EngineConfig
from deltaserve.engine.core import LLMEngine
from deltaserve.engine.graph import DecodeGraphs
from deltaserve.engine.sampling_params import SamplingParams
from deltaserve.testing import cached_checkpoint

PHASES = ("schedule", "prepare", "sample", "process", "other", "step")
MODES = {
    "greedy": dict(temperature=0.0),  # the offline benchmark
    "sample": dict(temperature=0.7, top_p=0.8, top_k=20),
    "seeded": dict(temperature=0.7, top_p=0.8, top_k=20, seed=1234),
}


class _Stub:
    """Stands in for the model: an empty forward; logits with one random token far ahead per row."""

    def __init__(self, config, pool: list[int], seed: int) -> None:
        self.config = config
        self.pool = pool
        self.rng = random.Random(seed)
        self.seconds = 0.0  # time spent inside the stub (subtracted from "prepare")

    def fill(self, logits: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        logits.zero_()
        rows = torch.arange(logits.shape[0])  # [N]
        cols = torch.tensor([self.rng.choice(self.pool) for _ in range(logits.shape[0])])  # [N]
        logits[rows, cols] = 30.0
        self.seconds += time.perf_counter() - t
        return logits

    def __call__(self, input_ids: torch.Tensor, batch) -> torch.Tensor:
        return torch.zeros(input_ids.shape[0], 1)  # [T, 1]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fill(torch.empty(hidden.shape[0], self.config.vocab_size))  # [N, V]


class _StubGraph:
    def __init__(self, graphs: DecodeGraphs, size: int, stub: _Stub) -> None:
        self.graphs, self.size, self.stub = graphs, size, stub

    def replay(self) -> None:
        self.stub.fill(self.graphs.logits[self.size])


def build_engine(max_bs: int, input_len: int, output_len: int, pool_kind: str, seed: int):
    """A CPU engine over the tiny Qwen3-Next checkpoint with the stub model and stub decode graphs."""
    path = cached_checkpoint("qwen3-next-a")
    config = EngineConfig.create(
        path,
        device="cpu",
        max_model_len=input_len + output_len + 8,
        max_num_seqs=max_bs,
        max_num_batched_tokens=max(2048, input_len * max_bs),
        seed=0,
        # the per-phase split needs each step processed inside its own step() call; overlap hides
        # this host work behind the GPU but does not shrink it
        overlap_schedule=False,
    )
    engine = LLMEngine(config)
    runner = engine.runner
    vocab = runner.vocab_size
    n_text = len(engine.tokenizer)  # ids >= this decode to nothing
    specials = set(engine.tokenizer.all_special_ids)
    if pool_kind == "text":
        pool = [i for i in range(min(n_text, vocab)) if i not in specials and i not in engine.eos_ids]
    else:
        pool = list(range(n_text, vocab))
    if not pool:
        raise ValueError(f"--tokens: no {pool_kind!r} ids in a vocabulary of {vocab}")
    stub = _Stub(runner.model_config, pool, seed)
    runner.model = stub
    graphs = DecodeGraphs(runner, max_bs=max_bs)
    for size in graphs.sizes:
        graphs.logits[size] = torch.zeros(size, vocab)  # [size, V]
        graphs.graphs[size] = _StubGraph(graphs, size, stub)
    runner.graphs = graphs
    return engine, stub


def _timed(fn, acc: dict, key: str):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[key] += time.perf_counter() - t

    return wrapper


def run_once(engine: LLMEngine, stub: _Stub, batch: int, args, params: SamplingParams, prof=None) -> dict:
    """Submit `batch` requests, run them to completion; mean host µs per all-decode step by phase."""
    rng = random.Random(args.seed)
    vocab = engine.runner.vocab_size
    prompts = [[rng.randrange(10, vocab) for _ in range(args.input_len)] for _ in range(batch)]
    acc: dict[str, float] = defaultdict(float)
    sums: dict[str, float] = defaultdict(float)
    n_steps = 0
    sched, runner = engine.scheduler, engine.runner
    originals = (sched.schedule, runner._forward, runner._sample, engine._process)
    sched.schedule = _timed(originals[0], acc, "schedule")
    runner._forward = _timed(originals[1], acc, "prepare")
    runner._sample = _timed(originals[2], acc, "sample")
    engine._process = _timed(originals[3], acc, "process")
    replays = runner.graphs.num_replays
    try:
        for i, p in enumerate(prompts):
            engine.add_request(f"p{batch}-{i}", p, params)
        while engine.has_unfinished_requests():
            acc.clear()
            stub_before = stub.seconds
            decode = all(s.num_uncomputed == 1 for s in sched.running) and len(sched.running) == batch
            if decode and prof is not None:
                prof.enable()
            t = time.perf_counter()
            engine.step(only_finished=not args.stream)
            step = time.perf_counter() - t
            if decode and prof is not None:
                prof.disable()
            if not decode:
                continue
            stub_s = stub.seconds - stub_before
            acc["prepare"] -= stub_s
            acc["step"] = step - stub_s
            acc["other"] = acc["step"] - sum(acc[k] for k in ("schedule", "prepare", "sample", "process"))
            for k in PHASES:
                sums[k] += acc[k]
            n_steps += 1
    finally:
        sched.schedule, runner._forward, runner._sample, engine._process = originals
    if runner.graphs.num_replays == replays:
        raise RuntimeError("the decode steps did not go through DecodeGraphs.run")
    return {k: sums[k] / max(1, n_steps) * 1e6 for k in PHASES} | {"steps": n_steps}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", default="1,16,64")
    ap.add_argument("--mode", default="greedy,sample", help=f"comma-separated of {sorted(MODES)}")
    ap.add_argument("--tokens", default="notext,text", help="comma-separated of notext, text")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stream", action="store_true", help="build every request's output each step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cprofile", type=int, default=0, help="print the top N functions (tottime)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    batches = [int(b) for b in args.batch.split(",")]
    results: dict = {"unit": "host us per decode step (CPU)", "runs": {}}
    print(f"{'tokens':7s} {'mode':7s} {'B':>3s} " + " ".join(f"{k:>9s}" for k in PHASES) + "   us/seq")
    for kind in args.tokens.split(","):
        engine, stub = build_engine(max(batches), args.input_len, args.output_len, kind, args.seed)
        for mode in args.mode.split(","):
            params = SamplingParams(max_tokens=args.output_len, ignore_eos=True, **MODES[mode])
            for b in batches:
                run_once(engine, stub, b, args, params)  # warm-up
                prof = cProfile.Profile() if args.cprofile else None
                runs = [run_once(engine, stub, b, args, params, prof) for _ in range(args.repeat)]
                best = {k: min(r[k] for r in runs) for k in runs[0]}  # each phase's best run
                results["runs"][f"{kind}/{mode}/{b}"] = best
                print(
                    f"{kind:7s} {mode:7s} {b:3d} "
                    + " ".join(f"{best[k]:9.1f}" for k in PHASES)
                    + f"   {best['step'] / b:6.1f}",
                    flush=True,
                )
                if prof is not None:
                    pstats.Stats(prof).sort_stats("tottime").print_stats(args.cprofile)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
