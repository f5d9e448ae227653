"""CPU tests of the reference MoE ops against HF Qwen3-Next's router, experts and MoE block."""

import pytest
import torch
from transformers import Qwen3NextConfig
from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextSparseMoeBlock

from deltaserve.ops.moe import ExpertWeights, fused_experts, fused_moe, route_topk, shared_expert


def _block(seed: int, norm_topk_prob: bool) -> Qwen3NextSparseMoeBlock:
    cfg = Qwen3NextConfig(
        hidden_size=32,
        num_experts=8,
        num_experts_per_tok=3,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=24,
        norm_topk_prob=norm_topk_prob,
    )
    torch.manual_seed(seed)
    block = Qwen3NextSparseMoeBlock(cfg).float()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return block


@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_moe_block_matches_hf(norm_topk_prob):
    block = _block(0, norm_topk_prob)
    x = torch.randn(1, 11, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = block(x)[0]
        x2 = x[0]
        logits = x2 @ block.gate.weight.T
        w, ids = route_topk(logits, 3, norm_topk_prob)
        _, hf_w, hf_ids = block.gate(x2)
        torch.testing.assert_close(w, hf_w.float(), rtol=0, atol=0)
        assert torch.equal(ids, hf_ids.long()) and ids.dtype == torch.int64 and w.dtype == torch.float32
        se = block.shared_expert
        w13_shared = torch.cat([se.gate_proj.weight, se.up_proj.weight], dim=0)
        out = fused_experts(x2, block.experts.gate_up_proj, block.experts.down_proj, w, ids)
        out = out + shared_expert(x2, w13_shared, se.down_proj.weight, block.shared_expert_gate.weight)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_fused_experts_naive_and_unrouted_experts():
    g = torch.Generator().manual_seed(4)
    t, h, i, e = 5, 16, 8, 6
    x = torch.randn(t, h, generator=g)
    w13 = torch.randn(e, 2 * i, h, generator=g)
    w2 = torch.randn(e, h, i, generator=g)
    ids = torch.tensor([[0, 2], [2, 0], [2, 5], [5, 2], [0, 5]])  # experts 1, 3, 4 unused
    tw = torch.rand(t, 2, generator=g)
    out = fused_experts(x, w13, w2, tw, ids)
    naive = torch.zeros(t, h)
    for ti in range(t):
        for k in range(2):
            ex = int(ids[ti, k])
            a = w13[ex, :i] @ x[ti]
            b = w13[ex, i:] @ x[ti]
            naive[ti] += tw[ti, k] * (w2[ex] @ (a * torch.sigmoid(a) * b))
    torch.testing.assert_close(out, naive, rtol=1e-5, atol=1e-4)


def test_moe_errors():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="top_k"):
        route_topk(torch.randn(2, 4), 5, True)
    with pytest.raises(ValueError, match="w2"):
        fused_experts(
            x, torch.randn(3, 6, 8), torch.randn(3, 8, 4), torch.ones(2, 1), torch.zeros(2, 1).long()
        )
    with pytest.raises(ValueError, match="topk_ids"):
        fused_experts(x, torch.randn(3, 6, 8), torch.randn(3, 8, 3), torch.ones(2, 1), torch.full((2, 1), 3))
    with pytest.raises(ValueError, match="gate_weight"):
        shared_expert(x, torch.randn(6, 8), torch.randn(8, 3), torch.randn(8))
    experts = ExpertWeights(torch.randn(3, 6, 8), torch.randn(3, 8, 3))
    with pytest.raises(ValueError, match="^router_logits has 4 experts, w13 3"):
        fused_moe(x, torch.randn(2, 4), 2, True, experts)  # the CPU path used to route over 4
    with pytest.raises(ValueError, match="^router_weight must be"):
        fused_moe(x, None, 2, True, experts, router_weight=torch.randn(3, 7))
