"""MoE ops: softmax top-k routing, routed SwiGLU experts, sigmoid-gated shared expert.

- ``route_topk(router_logits [T, E], top_k, renormalize) -> (weights [T, k] fp32, ids [T, k] int64)``
- ``fused_experts(x [T, H], w13 [E, 2I, H], w2 [E, H, I], topk_weights, topk_ids) -> [T, H]``
- ``shared_expert(x, w13 [2I, H], w2 [H, I], gate_weight [1, H]) -> [T, H]`` (torch only)
- ``fused_moe(x [T, H], router_logits [T, E] | None, top_k, renormalize, experts: ExpertWeights,
  shared: SharedExpertWeights | None, *, router_weight [E, H] | None) -> [T, H]``: the whole block
  after the router GEMM (or from it, given ``router_weight`` instead of the logits: decode batches
  then fold the router GEMM into the set-up launch), BF16 or block-FP8 experts, shared expert
  folded in as an always-on expert.

CUDA bf16/fp16 inputs go to the Triton kernels (``kernels.py``), anything else to the fp32 torch
reference (``reference.py``).
"""

from __future__ import annotations

import torch

from deltaserve.ops.moe import reference
from deltaserve.ops.moe.reference import ExpertWeights, SharedExpertWeights, shared_expert

__all__ = [
    "route_topk",
    "fused_experts",
    "shared_expert",
    "fused_moe",
    "ExpertWeights",
    "SharedExpertWeights",
]

_GPU_DTYPES = (torch.bfloat16, torch.float16)


def route_topk(
    router_logits: torch.Tensor, top_k: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax top-k routing: ``[T, E]`` -> ``(weights [T, k] fp32, ids [T, k] int64)``."""
    impl = _kernels() if router_logits.is_cuda else reference
    return impl.route_topk(router_logits, top_k, renormalize)


def fused_experts(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """Routed SwiGLU experts, weighted sum over each token's top-k: ``x [T, H]`` -> ``[T, H]``."""
    gpu = x.is_cuda and x.dtype in _GPU_DTYPES and w13.dtype == x.dtype
    impl = _kernels() if gpu else reference
    return impl.fused_experts(x, w13, w2, topk_weights, topk_ids)


def fused_moe(
    x: torch.Tensor,
    router_logits: torch.Tensor | None,
    top_k: int,
    renormalize: bool,
    experts: ExpertWeights,
    shared: SharedExpertWeights | None = None,
    *,
    router_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sparse MoE block: ``x [T, H]`` and either ``router_logits [T, E]`` or (``router_logits=None``)
    ``router_weight [E, H]`` (logits = ``x Wᵀ`` rounded to ``x.dtype``) -> ``[T, H]``."""
    impl = _kernels() if x.is_cuda and x.dtype in _GPU_DTYPES else reference
    return impl.fused_moe(x, router_logits, top_k, renormalize, experts, shared, router_weight=router_weight)


def _kernels():
    from deltaserve.ops.moe import kernels

    return kernels
