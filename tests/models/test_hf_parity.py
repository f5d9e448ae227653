"""Our CPU path against HF transformers on tiny random checkpoints in the official release layout.

Acceptance (issue 2): a batch of prompts of lengths 1, 37 and 130 in one forward gives logits within
1e-4 relative error of transformers (fp32), and 32 batched greedy decode steps (recurrent path,
states in a slot pool) give exactly transformers' greedy tokens; a mixed prefill+decode batch too.
"""

from __future__ import annotations

import pytest
import torch

from deltaserve.models.registry import load_model
from deltaserve.testing import load_hf_model
from deltaserve.testing.harness import StaticRunner
from deltaserve.testing.hf import hf_greedy

PRESETS = [
    "qwen3-next-a",  # head_dim 64, Hv/Hk 2, per-expert MoE, legacy config style
    "qwen3-next-b",  # head_dim 128, Hv/Hk 3, Dk != Dv, bf16 shards
    "qwen3.5-dense-a",  # tied embeddings, Hv/Hk 2
    "qwen3.5-dense-b",  # Hv/Hk 3, head_dim 128, full attention every 3rd layer
    "qwen3.5-moe-a",  # per-expert MoE, sharded
    "qwen3.5-moe-b",  # fused (stacked) experts, Hv/Hk 3
    "qwen3.5-vl-dense",  # multimodal root: model.language_model.* + model.visual.*
    "qwen3.5-vl-moe-fused",
]
PROMPT_LENS = (1, 37, 130)
DECODE_STEPS = 32
REL_TOL = 1e-4


def _prompts(vocab: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in PROMPT_LENS]


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).norm() / ref.norm())


@pytest.fixture(scope="module")
def models(tiny_checkpoint):
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            path = tiny_checkpoint(name)
            cache[name] = (load_model(path, dtype=torch.float32), load_hf_model(path, torch.float32))
        return cache[name]

    return get


@torch.no_grad()
def _hf_logits(hf, prompt: list[int]) -> torch.Tensor:
    return hf(torch.tensor([prompt])).logits[0].float()  # [L, V]


@pytest.mark.parametrize("name", PRESETS)
def test_prefill_logits_and_greedy_decode(models, name: str) -> None:
    ours, hf = models(name)
    prompts = _prompts(ours.config.vocab_size)
    runner = StaticRunner(ours)
    outs = runner.step([(i, p) for i, p in enumerate(prompts)])
    for p, o in zip(prompts, outs):
        ref = _hf_logits(hf, p)
        assert o.shape == ref.shape
        assert _rel_err(o, ref) < REL_TOL, f"prompt of {len(p)} tokens"

    generated = {i: [int(o[-1].argmax())] for i, o in enumerate(outs)}
    for _ in range(DECODE_STEPS - 1):
        outs = runner.step([(i, [toks[-1]]) for i, toks in generated.items()])
        for i, o in enumerate(outs):
            generated[i].append(int(o[-1].argmax()))
    for i, p in enumerate(prompts):
        ref = hf_greedy(hf, p, DECODE_STEPS)
        assert generated[i] == ref, f"prompt {i} ({len(p)} tokens)"


@pytest.mark.parametrize(
    "name, ssm_layout, conv_layout",
    [("qwen3-next-b", "vk", "wd"), ("qwen3.5-moe-b", "vk", "dw"), ("qwen3.5-dense-a", "kv", "wd")],
)
def test_mixed_prefill_decode_batch_and_layouts(models, name: str, ssm_layout: str, conv_layout: str) -> None:
    """One forward holding a decoding sequence, a fresh prefill and a continued (chunked) prefill."""
    ours, hf = models(name)
    a, b, c = _prompts(ours.config.vocab_size, seed=2)[::-1]  # 130, 37, 1 tokens
    runner = StaticRunner(ours, ssm_layout=ssm_layout, conv_layout=conv_layout, block_size=16)
    first = runner.step([("a", a[:100]), ("b", b)])
    next_b = int(first[1][-1].argmax())
    # mixed: b decodes one token, a continues its prompt from a cached prefix, c starts fresh
    mixed = runner.step([("b", [next_b]), ("a", a[100:]), ("c", c)])
    ref_a, ref_b, ref_c = _hf_logits(hf, a), _hf_logits(hf, b + [next_b]), _hf_logits(hf, c)
    assert _rel_err(torch.cat([first[0], mixed[1]]), ref_a) < REL_TOL
    assert _rel_err(mixed[0], ref_b[-1:]) < REL_TOL
    assert _rel_err(mixed[2], ref_c) < REL_TOL


def test_released_slot_is_reused_cleanly(models) -> None:
    """A new sequence in a freed slot must not see the previous owner's conv/recurrent state."""
    ours, hf = models("qwen3-next-a")
    p1, p2, _ = _prompts(ours.config.vocab_size, seed=3)
    runner = StaticRunner(ours, num_slots=1)
    runner.step([("x", p2)])
    runner.release("x")
    out = runner.step([("y", p1)])[0]
    assert _rel_err(out, _hf_logits(hf, p1)) < REL_TOL
