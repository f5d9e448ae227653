"""CPU tests of the reference RoPE against HF Qwen3-Next / Qwen3.5 rotary + apply_rotary_pos_emb."""

import pytest
import torch
from transformers import Qwen3NextConfig
from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5TextConfig
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5TextRotaryEmbedding
from transformers.models.qwen3_next.modeling_qwen3_next import (
    Qwen3NextRotaryEmbedding,
    apply_rotary_pos_emb,
)

from deltaserve.ops.rope import apply_rotary, rope_cos_sin
from deltaserve.ops.rope.reference import mrope_axis_map


@pytest.mark.parametrize("head_dim,factor,theta", [(256, 0.25, 1e7), (64, 0.5, 1e4), (32, 1.0, 1e6)])
def test_rope_matches_hf_qwen3_next(head_dim, factor, theta):
    cfg = Qwen3NextConfig(
        hidden_size=64,
        num_attention_heads=4,
        head_dim=head_dim,
        rope_parameters={"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": factor},
    )
    rot = Qwen3NextRotaryEmbedding(cfg)
    rd = int(head_dim * factor)
    pos = torch.tensor([0, 1, 2, 7, 100, 4095, 65537])
    g = torch.Generator().manual_seed(0)
    q = torch.randn(pos.numel(), 3, head_dim, generator=g)  # [T, H, D]
    k = torch.randn(pos.numel(), 2, head_dim, generator=g)
    hf_cos, hf_sin = rot(q, pos[None])  # [1, T, rd]
    cos, sin = rope_cos_sin(pos, rd, theta)
    assert cos.shape == (pos.numel(), rd) and cos.dtype == torch.float32
    torch.testing.assert_close(cos, hf_cos[0], rtol=0, atol=0)
    torch.testing.assert_close(sin, hf_sin[0], rtol=0, atol=0)
    # HF works on [B, H, T, D]
    hf_q, hf_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], hf_cos, hf_sin)
    torch.testing.assert_close(apply_rotary(q, cos, sin), hf_q[0].transpose(0, 1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(apply_rotary(k, cos, sin), hf_k[0].transpose(0, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("head_dim,section", [(256, [11, 11, 10]), (64, [3, 3, 2])])
def test_mrope_interleaved_matches_hf_qwen3_5(head_dim, section):
    rd = head_dim // 4
    cfg = Qwen3_5TextConfig(
        hidden_size=64,
        num_attention_heads=4,
        head_dim=head_dim,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1e7,
            "partial_rotary_factor": 0.25,
            "mrope_section": section,
            "mrope_interleaved": True,
        },
    )
    rot = Qwen3_5TextRotaryEmbedding(cfg)
    g = torch.Generator().manual_seed(1)
    t = 9
    pos3 = torch.randint(0, 500, (3, t), generator=g)
    x = torch.randn(t, 2, head_dim, generator=g)
    hf_cos, hf_sin = rot(x, pos3[:, None, :])  # [1, T, rd]
    cos, sin = rope_cos_sin(pos3, rd, 1e7, mrope_section=section, mrope_interleaved=True)
    torch.testing.assert_close(cos, hf_cos[0], rtol=0, atol=0)
    torch.testing.assert_close(sin, hf_sin[0], rtol=0, atol=0)
    # text positions: [T] equals [3, T] with equal rows equals plain RoPE
    pos = torch.arange(t) * 5
    hf_cos1, _ = rot(x, pos[None])
    cos1, sin1 = rope_cos_sin(pos, rd, 1e7, mrope_section=section, mrope_interleaved=True)
    torch.testing.assert_close(cos1, hf_cos1[0], rtol=0, atol=0)
    plain_cos, plain_sin = rope_cos_sin(pos, rd, 1e7)
    torch.testing.assert_close(cos1, plain_cos, rtol=0, atol=0)
    torch.testing.assert_close(sin1, plain_sin, rtol=0, atol=0)


def test_mrope_axis_maps():
    assert mrope_axis_map(16, [3, 3, 2], True).tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert mrope_axis_map(16, [3, 3, 2], False).tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert mrope_axis_map(16, [4, 2, 2], True).tolist() == [0, 1, 2, 0, 1, 2, 0, 0]


def test_apply_rotary_naive_pairs():
    g = torch.Generator().manual_seed(2)
    t, h, d, rd = 4, 2, 12, 8
    x = torch.randn(t, h, d, generator=g, dtype=torch.float64).float()
    pos = torch.tensor([0, 3, 9, 1000])
    cos, sin = rope_cos_sin(pos, rd, 10000.0)
    out = apply_rotary(x, cos, sin)
    half = rd // 2
    for ti in range(t):
        for i in range(half):
            ang = float(pos[ti]) * 10000.0 ** (-2 * i / rd)
            a, b = x[ti, :, i], x[ti, :, i + half]
            c, s = torch.cos(torch.tensor(ang)), torch.sin(torch.tensor(ang))
            torch.testing.assert_close(out[ti, :, i], a * c - b * s, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(out[ti, :, i + half], b * c + a * s, rtol=1e-4, atol=1e-4)
    assert torch.equal(out[..., rd:], x[..., rd:])


def test_rope_errors():
    with pytest.raises(ValueError, match="rotary_dim"):
        rope_cos_sin(torch.arange(3), 7, 1e4)
    with pytest.raises(ValueError, match="positions"):
        rope_cos_sin(torch.arange(3).float(), 8, 1e4)
    with pytest.raises(ValueError, match="mrope_section"):
        rope_cos_sin(torch.arange(3), 8, 1e4, mrope_section=[1, 1, 1])
    cos, sin = rope_cos_sin(torch.arange(3), 8, 1e4)
    with pytest.raises(ValueError, match="x"):
        apply_rotary(torch.randn(3, 8), cos, sin)
    with pytest.raises(ValueError, match="rotary_dim"):
        apply_rotary(torch.randn(3, 1, 6), cos, sin)
