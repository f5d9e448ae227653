"""GPU engine checks: CUDA-graph decode equals eager decode (tokens and step logits)."""

from __future__ import annotations

import gc

import pytest
import torch

from deltaserve.config import EngineConfig
from deltaserve.engine.core import LLMEngine
from deltaserve.engine.sampling_params import SamplingParams
from deltaserve.testing import resolve_spec

pytestmark = pytest.mark.gpu

# The Triton GDN prefill takes bf16/fp16 and Dk in {64, 128, 256}: the tiny presets with GDN head
# dims raised to 64 (attention head_dim is already 64).
DENSE = resolve_spec("qwen3.5-dense-a").replace(linear_key_head_dim=64, linear_value_head_dim=64)
NEXT = resolve_spec("qwen3-next-a").replace(linear_key_head_dim=64, linear_value_head_dim=64)

PROMPTS = [[5 + i, 17, 300 - i, 42] * (1 + i % 4) for i in range(11)]


def _run(engine: LLMEngine, params: SamplingParams, prompts=PROMPTS) -> list[list[int]]:
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, params)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[int(out.request_id)] = out.outputs[0].token_ids
    engine.check_integrity()
    return [done[i] for i in range(len(prompts))]


def _engine(path, **kw) -> LLMEngine:
    args = dict(
        device="cuda",
        max_model_len=256,
        max_num_seqs=16,
        max_num_batched_tokens=64,
        gpu_memory_utilization=0.5,
        seed=0,
    )
    args.update(kw)
    return LLMEngine(EngineConfig.create(path, **args))


def test_cuda_graph_decode_equals_eager(tiny_checkpoint):
    """Whole runs (bf16; the Triton prefill takes bf16/fp16): the graphed engine's tokens, greedy and
    seeded, equal the eager engine's. 16 requests prefilled in one step and decoded in lockstep, so
    every decode batch is exactly a captured size and both paths run the same kernels on the same
    shapes (max_model_len 256 keeps the attention split count equal too)."""
    path = tiny_checkpoint(DENSE)
    prompts = [PROMPTS[i % len(PROMPTS)] + [i + 3] for i in range(16)]
    greedy = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    seeded = SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=16, ignore_eos=True)
    kw = dict(dtype="bfloat16", max_num_batched_tokens=512)
    graphed = _engine(path, **kw)
    assert graphed.runner.graphs is not None, f"CUDA-graph capture failed: {graphed.runner.graph_error}"
    got = [_run(graphed, greedy, prompts), _run(graphed, seeded, prompts)]
    assert graphed.runner.graphs.num_replays > 0
    del graphed
    gc.collect()
    torch.cuda.empty_cache()
    eager = _engine(path, enforce_eager=True, **kw)
    assert eager.runner.graphs is None
    assert got == [_run(eager, greedy, prompts), _run(eager, seeded, prompts)]


def test_moe_model_graphs_match_eager_first_tokens(tiny_checkpoint):
    """Qwen3-Next (fused MoE on GPU): graphs are captured (else the reason is shown) and the first
    two generated tokens (prefill, then the first graphed decode) equal the eager engine's."""
    path = tiny_checkpoint(NEXT)
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    graphed = _engine(path, dtype="bfloat16")
    assert graphed.runner.graphs is not None, f"CUDA-graph capture failed: {graphed.runner.graph_error}"
    got = _run(graphed, params)
    del graphed
    gc.collect()
    torch.cuda.empty_cache()
    want = _run(_engine(path, dtype="bfloat16", enforce_eager=True), params)
    assert [g[:2] for g in got] == [w[:2] for w in want]


def test_pdl_on_equals_off(tiny_checkpoint, monkeypatch):
    """Programmatic dependent launch (ops/pdl.py) changes launch order only: the graphed Qwen3-Next
    engine's greedy tokens are identical with it off and on (a missing wait would read stale
    activations somewhere in the chain of GEMVs and norms)."""
    from deltaserve.ops import pdl

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm_90 or later")
    path = tiny_checkpoint(NEXT)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    got = {}
    for on in (False, True):
        monkeypatch.setattr(pdl, "ENABLED", on)
        engine = _engine(path, dtype="bfloat16")
        assert engine.runner.graphs is not None, f"CUDA-graph capture failed: {engine.runner.graph_error}"
        got[on] = _run(engine, params)
        del engine
        gc.collect()
        torch.cuda.empty_cache()
    assert got[True] == got[False]


def _state_tensors(runner) -> list[torch.Tensor]:
    st = runner.states
    return [t for pair in st.kv.values() for t in pair] + list(st.conv.values()) + list(st.ssm.values())


@pytest.mark.parametrize(
    "name,batch",
    [("qwen3.5-dense-a", 1), ("qwen3.5-dense-a", 3), ("qwen3.5-dense-a", 16), ("qwen3-next-a", 5)],
)
def test_graph_step_logits_match_eager(tiny_checkpoint, name, batch):
    """One decode step from the same cache state: graph replay (padded to the captured size) vs eager."""
    dtype = "bfloat16"
    engine = _engine(tiny_checkpoint(DENSE if name == "dense" else NEXT), dtype=dtype)
    for i in range(batch):
        engine.add_request(str(i), PROMPTS[i % len(PROMPTS)], SamplingParams(temperature=0, max_tokens=50))
    running = engine.scheduler.running
    while len(running) < batch or any(s.num_uncomputed != 1 for s in running):  # finish prefills
        engine.step()
    engine.step()  # one decode for everyone
    engine.flush()  # process it if it was left pending (overlap), so every sequence has one token to decode
    sched = engine.scheduler.schedule()
    assert len(sched.scheduled) == batch and all(e.num_new == 1 for e in sched.scheduled)
    runner = engine.runner
    if runner.graphs is None:
        pytest.skip(f"no CUDA graphs for this model: {runner.graph_error}")
    saved = [t.clone() for t in _state_tensors(runner)]
    graph_logits, _ = runner.forward_logits(sched, allow_graph=True)
    graph_logits = graph_logits.clone()
    graph_state = [t.clone() for t in _state_tensors(runner)]
    for t, s in zip(_state_tensors(runner), saved):
        t.copy_(s)
    eager_logits, _ = runner.forward_logits(sched, allow_graph=False)
    tol = 3e-2  # bf16 activations; padded GEMM shapes may round differently
    torch.testing.assert_close(graph_logits, eager_logits, rtol=tol, atol=tol)
    for a, b in zip(graph_state, _state_tensors(runner)):
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol)
