"""The offline `LLM` API (vLLM shapes) and the engine config / env plumbing."""

from __future__ import annotations

import pytest

from deltaserve import LLM, SamplingParams
from deltaserve.config import EngineConfig


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    return LLM(str(tiny_checkpoint("qwen3.5-dense-a")), device="cpu", max_model_len=96, max_num_seqs=4)


def test_generate_shapes_and_order(llm, capsys):
    prompts = ["hello there", {"prompt_token_ids": [5, 6, 7]}, {"prompt": "a b c"}]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (3, 5, 2)]
    outs = llm.generate(prompts, params)
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 5, 2]
    assert outs[1].prompt_token_ids == [5, 6, 7] and outs[0].prompt == "hello there"
    assert outs[0].prompt_token_ids == llm.get_tokenizer().encode("hello there", add_special_tokens=False)
    assert all(o.finished and o.outputs[0].finish_reason == "length" for o in outs)
    assert all(isinstance(o.outputs[0].text, str) for o in outs)
    assert "Processed prompts" in capsys.readouterr().err
    single = llm.generate(
        "hello there", SamplingParams(temperature=0, max_tokens=3, ignore_eos=True), use_tqdm=False
    )
    assert single[0].outputs[0].token_ids == outs[0].outputs[0].token_ids


def test_generate_errors(llm):
    with pytest.raises(ValueError, match="sampling_params"):
        llm.generate(["a", "b"], [SamplingParams()])
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate([{"prompt_token_ids": list(range(3, 200))}], use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()


def test_engine_config_resolution_and_errors(tiny_checkpoint, monkeypatch):
    path = tiny_checkpoint("qwen3.5-dense-a")
    cfg = EngineConfig.create(path, device="cpu")
    assert cfg.dtype == "float32" and cfg.ssm_dtype == "float32" and cfg.max_model_len == 8192
    assert cfg.cuda_graph_max_bs == 0 and not cfg.use_cuda_graphs
    monkeypatch.setenv("DELTASERVE_CPU_CACHE_GIB", "0.25")
    assert EngineConfig.create(path, device="cpu").cpu_cache_bytes == 2**28
    for bad, name in [
        (dict(max_num_seqs=0), "max_num_seqs"),
        (dict(max_num_seqs=64, max_num_batched_tokens=16), "max_num_batched_tokens"),
        (dict(dtype="int8"), "dtype"),
        (dict(gpu_memory_utilization=1.5), "gpu_memory_utilization"),
        (dict(max_model_len=10**7), "max_model_len"),
        (dict(bogus=1), "bogus"),
    ]:
        with pytest.raises(ValueError, match=name):
            EngineConfig.create(path, device="cpu", **bad)
    with pytest.raises(ValueError, match="model"):
        EngineConfig.create(path / "nope", device="cpu")


def test_env_typed(monkeypatch):
    from deltaserve import env

    monkeypatch.setenv("DELTASERVE_DISABLE_PROGRESS_BAR", "yes")
    assert env.get("DELTASERVE_DISABLE_PROGRESS_BAR") is True
    monkeypatch.setenv("DELTASERVE_CUDA_GRAPH_MAX_BS", "x")
    with pytest.raises(ValueError, match="DELTASERVE_CUDA_GRAPH_MAX_BS"):
        env.get("DELTASERVE_CUDA_GRAPH_MAX_BS")
    with pytest.raises(KeyError):
        env.get("DELTASERVE_NOPE")
