"""Our model built and loaded by SGLang's own loader, run on SGLang's own pools and batches
(EXTEND, DECODE, MIXED; several requests of mixed lengths), matches our standalone path.

Dk != Dv in every checkpoint here, so an SSM-layout mix-up cannot pass by symmetry; the "kv"
pools re-create SGLang <= 0.5.9's reading of the temporal state, "vk" is >= 0.5.10's.
"""

from __future__ import annotations

import pytest
import torch

from deltaserve.models.registry import load_model
from deltaserve.plugin.sglang.bridge import SGLangBridge, UnsupportedBatchError, build_state_tensors
from deltaserve.plugin.sglang.version import detect_ssm_layout, parse_version
from deltaserve.testing.cache import cached_checkpoint
from deltaserve.testing.harness import StaticRunner
from deltaserve.testing.specs import resolve_spec

CASES = {
    "qwen3-next": ("qwen3-next-a", ("vk", "kv")),
    "qwen3.5-dense": ("qwen3.5-dense-a", ("vk",)),
    "qwen3.5-vl-moe": ("qwen3.5-vl-moe-fused", ("vk",)),
}
RTOL = 1e-4
# Cases a given SGLang cannot run at all (not a deltaserve limitation), with the reason.
HOST_CANNOT = {
    ((0, 5, 9), "qwen3.5-vl-moe"): "SGLang 0.5.9's Qwen3.5 config code predates transformers 5 "
    "(it pins 4.57.1); the fixture writer needs transformers >= 5",
}


def _checkpoint(name: str):
    spec = resolve_spec(name).replace(linear_key_head_dim=16, linear_value_head_dim=24)
    return cached_checkpoint(spec)


_MODELS: dict[str, torch.nn.Module] = {}


def _sglang_model(name: str) -> torch.nn.Module:
    if name not in _MODELS:
        import sglang_harness

        _MODELS[name] = sglang_harness.load_through_sglang(_checkpoint(name))
    return _MODELS[name]


def _schedule(vocab: int) -> list[tuple[list[tuple[str, list[int]]], str | None]]:
    g = torch.Generator().manual_seed(3)
    p = {
        rid: torch.randint(0, vocab, (n,), generator=g).tolist() for rid, n in (("a", 7), ("b", 19), ("c", 3))
    }
    tok = torch.randint(0, vocab, (12,), generator=g).tolist()
    return [
        ([("a", p["a"]), ("b", p["b"])], None),  # EXTEND, two prompts of different lengths
        ([("a", tok[:1]), ("b", tok[1:2])], None),  # DECODE
        ([("c", p["c"]), ("a", tok[2:3]), ("b", tok[3:4])], "MIXED"),  # new prompt + running decodes
        ([("a", tok[4:5]), ("b", tok[5:6]), ("c", tok[6:7])], None),  # DECODE, three requests
        ([("b", tok[7:11]), ("c", tok[11:12])], "EXTEND"),  # a continued prefill chunk (prefix > 0)
    ]


@pytest.mark.parametrize(("case", "layout"), [(c, lay) for c, (_, lays) in CASES.items() for lay in lays])
def test_logits_match_standalone(sglang_runtime, case: str, layout: str) -> None:
    name = CASES[case][0]
    reason = HOST_CANNOT.get((parse_version(sglang_runtime.__version__), case))
    if reason:
        pytest.skip(reason)
    model = _sglang_model(name)
    text_config = model.hf_config.get_text_config()
    if not hasattr(text_config, "mamba2_cache_params"):
        # SGLang only allocates GDN state pools for its own hybrid config classes; e.g. 0.5.9 has
        # none for text-only Qwen3.5 (`qwen3_5_text`), so SGLang cannot serve that checkpoint at all.
        pytest.skip(
            f"sglang {sglang_runtime.__version__} has no hybrid config class for {type(text_config).__name__}"
        )
    assert type(model).__module__.startswith("deltaserve.plugin.sglang.models.")
    model.bridge = SGLangBridge(model.config, layout)  # detect_ssm_layout() gives one per version
    _check_against_standalone(model, name, layout, _schedule(model.config.vocab_size), f"{case}/{layout}")


def _check_against_standalone(model, name: str, layout: str, schedule, label: str) -> None:
    import sglang_harness

    rtp, kvp = sglang_harness.make_pools(model, ssm_layout=layout)
    driver = sglang_harness.SGLangDriver(model, rtp, kvp)
    ref = StaticRunner(load_model(_checkpoint(name)), ssm_layout="kv")
    temporal_ptr = rtp.mamba_pool.mamba_cache.temporal.data_ptr()
    for work, mode in schedule:
        got = driver.step(work, mode=mode)  # [B, V]
        want = torch.stack([logits[-1] for logits in ref.step(work)])  # last token of each request
        assert got.shape == want.shape
        err = (got - want).abs().max() / want.abs().max()
        assert err < RTOL, f"{label} {mode or 'auto'} step: rel err {err:.2e}"
    # The recurrent state lives in SGLang's own pool (same storage), in SGLang's layout.
    assert rtp.mamba_pool.mamba_cache.temporal.data_ptr() == temporal_ptr
    for layer in model.config.linear_layers:
        idx = rtp.mamba_map[layer]
        for rid in driver.reqs:
            slot = int(rtp.req_index_to_mamba_index_mapping[driver.reqs[rid].row])
            ours = ref.states.ssm[layer][ref.seqs[rid].slot]  # [HV, Dk, Dv]
            theirs = rtp.mamba_pool.mamba_cache.temporal[idx, slot]
            theirs = theirs if layout == "kv" else theirs.transpose(-1, -2)
            torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


def test_bridge_uses_installed_layout(sglang_runtime) -> None:
    model = _sglang_model("qwen3-next-a")
    want = "kv" if parse_version(sglang_runtime.__version__) < (0, 5, 10) else "vk"
    assert SGLangBridge(model.config, detect_ssm_layout()).ssm_layout == want
    assert type(model)(model.hf_config).bridge.ssm_layout == want


def test_graph_capture_bound(sglang_runtime, monkeypatch) -> None:
    """Under CUDA-graph capture the bridge must not freeze a host-side context bound: it uses the
    full `req_to_token` width, and the results stay exact."""
    from deltaserve.plugin.sglang import bridge

    model = _sglang_model("qwen3-next-a")
    model.bridge = SGLangBridge(model.config, detect_ssm_layout())
    seen = []
    real = bridge.SGLangBridge.forward_batch

    def spy(self, fb, positions):
        out = real(self, fb, positions)
        seen.append(out.max_seq_len)
        return out

    monkeypatch.setattr(bridge, "_capturing", lambda: True)
    monkeypatch.setattr(bridge.SGLangBridge, "forward_batch", spy)
    steps = _schedule(model.config.vocab_size)[:2]  # EXTEND, DECODE
    _check_against_standalone(model, "qwen3-next-a", model.bridge.ssm_layout, steps, "capture")
    assert seen == [256, 256]  # the harness's max_context_len


def test_pool_layout_mismatch_is_named(sglang_runtime) -> None:
    import sglang_harness

    model = _sglang_model("qwen3-next-a")
    rtp, kvp = sglang_harness.make_pools(model, ssm_layout="vk")
    with pytest.raises(ValueError, match="temporal state .* 'kv' layout"):
        build_state_tensors(model.config, rtp, kvp, "kv")


def test_fp8_kv_cache_is_refused(sglang_runtime) -> None:
    import sglang_harness

    model = _sglang_model("qwen3-next-a")
    rtp, kvp = sglang_harness.make_pools(model, ssm_layout="vk", kv_dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="unquantised KV cache"):
        build_state_tensors(model.config, rtp, kvp, "vk")


def test_speculative_modes_are_refused(sglang_runtime) -> None:
    from types import SimpleNamespace

    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    model = _sglang_model("qwen3-next-a")
    fb = SimpleNamespace(forward_mode=ForwardMode.TARGET_VERIFY)
    with pytest.raises(UnsupportedBatchError, match="TARGET_VERIFY"):
        model.bridge.forward_batch(fb, torch.zeros(1, dtype=torch.int64))


def test_embed_and_head_are_shared(sglang_runtime) -> None:
    """The speculative-decoding hooks hand out and adopt the very tensors (no copies)."""
    model = _sglang_model("qwen3-next-a")
    embed, head = model.get_embed_and_head()
    assert embed is model.model.embed_tokens.weight and head is model.lm_head.weight
    draft = type(model)(model.hf_config)
    draft.set_embed_and_head(embed, head)
    assert draft.model.embed_tokens.weight.data_ptr() == embed.data_ptr()
    assert draft.lm_head.weight.data_ptr() == head.data_ptr()
