"""Plain-torch reference MoE ops (fp32 math), matching HF Qwen3-Next / Qwen3.5-MoE.

Router: ``softmax(logits)`` in fp32, top-k, optional renormalisation (``norm_topk_prob``).
Experts: SwiGLU, ``w13[e] = [gate; up]`` stacked on the output dim (HF ``gate_up_proj``),
``y_e = w2[e] @ (silu(gate x) * up x)``; ``out = sum_k weight_k * y_{id_k}``.
Shared expert: ``sigmoid(x @ gate_weight.T) * w2 @ (silu(gate x) * up x)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from deltaserve.ops.fp8.reference import FP8_DTYPE, dequant_block_fp8

__all__ = [
    "route_topk",
    "fused_experts",
    "shared_expert",
    "fused_moe",
    "ExpertWeights",
    "SharedExpertWeights",
]


class ExpertWeights(NamedTuple):
    """Stacked routed experts: ``w13 [E, 2I, H]`` (gate rows, then up), ``w2 [E, H, I]``.

    For block-FP8 (e4m3) weights also ``*_scale_inv [E, NB, ceil(K/block_k)]`` fp32 and
    ``*_row_block [N]`` (scale row of each weight row, shared by all experts); see ops/fp8.
    """

    w13: torch.Tensor
    w2: torch.Tensor
    w13_scale_inv: torch.Tensor | None = None
    w2_scale_inv: torch.Tensor | None = None
    w13_row_block: torch.Tensor | None = None
    w2_row_block: torch.Tensor | None = None
    block_k: int = 128

    def dequantized(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w13, w2)`` in ``dtype`` (dequantised when FP8)."""
        if self.w13.dtype != FP8_DTYPE:
            return self.w13.to(dtype), self.w2.to(dtype)
        w13 = dequant_block_fp8(self.w13, self.w13_scale_inv, self.w13_row_block, self.block_k)
        w2 = dequant_block_fp8(self.w2, self.w2_scale_inv, self.w2_row_block, self.block_k)
        return w13.to(dtype), w2.to(dtype)


class SharedExpertWeights(NamedTuple):
    """Shared expert: ``w13 [2I, H]``, ``w2 [H, I]``, ``gate_weight [1, H]`` (``sigmoid`` gate);
    FP8 weights carry ``*_scale_inv [NB, KB]`` and ``*_row_block [N]`` as in ExpertWeights."""

    w13: torch.Tensor
    w2: torch.Tensor
    gate_weight: torch.Tensor
    w13_scale_inv: torch.Tensor | None = None
    w2_scale_inv: torch.Tensor | None = None
    w13_row_block: torch.Tensor | None = None
    w2_row_block: torch.Tensor | None = None
    block_k: int = 128

    def dequantized(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w13, w2)`` in ``dtype`` (dequantised when FP8)."""
        if self.w13.dtype != FP8_DTYPE:
            return self.w13.to(dtype), self.w2.to(dtype)
        w13 = dequant_block_fp8(self.w13, self.w13_scale_inv, self.w13_row_block, self.block_k)
        w2 = dequant_block_fp8(self.w2, self.w2_scale_inv, self.w2_row_block, self.block_k)
        return w13.to(dtype), w2.to(dtype)


def route_topk(
    router_logits: torch.Tensor, top_k: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax top-k routing.

    Args:
        router_logits: ``[T, E]``.
        top_k: experts per token, ``1 <= top_k <= E``.
        renormalize: divide the selected probabilities by their sum.
    Returns:
        ``(weights [T, k] fp32, ids [T, k] int64)``, ids in descending probability order.
    """
    if router_logits.dim() != 2:
        raise ValueError(f"router_logits must be [T, E], got {tuple(router_logits.shape)}")
    if not 1 <= top_k <= router_logits.shape[1]:
        raise ValueError(f"top_k must be in 1..E={router_logits.shape[1]}, got {top_k}")
    probs = torch.softmax(router_logits.float(), dim=-1)  # [T, E]
    weights, ids = torch.topk(probs, top_k, dim=-1)  # [T, k]
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids.to(torch.int64)


def _swiglu(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    gate, up = F.linear(x, w13).chunk(2, dim=-1)  # [N, I] each
    return F.linear(F.silu(gate) * up, w2)  # [N, H]


def fused_experts(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """Routed SwiGLU experts, weighted sum over each token's top-k.

    Args:
        x: ``[T, H]``.
        w13: ``[E, 2I, H]``; rows ``[:I]`` = gate_proj, ``[I:]`` = up_proj.
        w2: ``[E, H, I]`` (down_proj).
        topk_weights: ``[T, k]``. topk_ids: ``[T, k]`` int in ``0..E-1``.
    Returns:
        ``[T, H]`` in ``x.dtype``; experts accumulated in ascending expert order in fp32, as HF does.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be [T, H], got {tuple(x.shape)}")
    t, h = x.shape
    if w13.dim() != 3 or w13.shape[2] != h or w13.shape[1] % 2 != 0:
        raise ValueError(f"w13 must be [E, 2I, H={h}], got {tuple(w13.shape)}")
    e, two_i, _ = w13.shape
    if w2.shape != (e, h, two_i // 2):
        raise ValueError(f"w2 must be [E={e}, H={h}, I={two_i // 2}], got {tuple(w2.shape)}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != t:
        raise ValueError(f"topk_ids must be [T={t}, k], got {tuple(topk_ids.shape)}")
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(
            f"topk_weights shape {tuple(topk_weights.shape)} != topk_ids shape {tuple(topk_ids.shape)}"
        )
    if topk_ids.numel() and (int(topk_ids.min()) < 0 or int(topk_ids.max()) >= e):
        raise ValueError(f"topk_ids entries must be in 0..{e - 1}")

    xf = x.float()  # [T, H]
    out = torch.zeros(t, h, dtype=torch.float32, device=x.device)  # [T, H]
    for expert in torch.unique(topk_ids).tolist():
        tok, pos = torch.where(topk_ids == expert)  # [N], [N]
        y = _swiglu(xf[tok], w13[expert].float(), w2[expert].float())  # [N, H]
        out.index_add_(0, tok, y * topk_weights[tok, pos, None].float())
    return out.to(x.dtype)


def shared_expert(
    x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, gate_weight: torch.Tensor
) -> torch.Tensor:
    """Sigmoid-gated shared SwiGLU expert.

    Args:
        x: ``[T, H]``. w13: ``[2I, H]`` (gate rows then up rows). w2: ``[H, I]``.
        gate_weight: ``[1, H]`` (``shared_expert_gate``).
    Returns:
        ``[T, H]`` in ``x.dtype``.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be [T, H], got {tuple(x.shape)}")
    h = x.shape[1]
    if w13.dim() != 2 or w13.shape[1] != h or w13.shape[0] % 2 != 0:
        raise ValueError(f"w13 must be [2I, H={h}], got {tuple(w13.shape)}")
    if w2.shape != (h, w13.shape[0] // 2):
        raise ValueError(f"w2 must be [H={h}, I={w13.shape[0] // 2}], got {tuple(w2.shape)}")
    if gate_weight.shape != (1, h):
        raise ValueError(f"gate_weight must be [1, H={h}], got {tuple(gate_weight.shape)}")
    xf = x.float()  # [T, H]
    y = _swiglu(xf, w13.float(), w2.float())  # [T, H]
    g = torch.sigmoid(F.linear(xf, gate_weight.float()))  # [T, 1]
    return (g * y).to(x.dtype)


def router_logits_of(x: torch.Tensor, router_weight: torch.Tensor) -> torch.Tensor:
    """The router GEMM as a bf16/fp16 GEMM computes it: fp32 sums of ``x [T, H] · router_weight [E, H]``,
    rounded once to ``x.dtype``: ``[T, E]``."""
    if x.dim() != 2 or router_weight.dim() != 2 or router_weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"router_weight must be [E, H={x.shape[-1]}] for x [T, H], got {tuple(router_weight.shape)}"
        )
    return F.linear(x.float(), router_weight.float()).to(x.dtype)


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
    """Sparse MoE block after (or, with ``router_weight``, from) the router GEMM, all in fp32,
    rounded once to ``x.dtype``.

    ``route_topk`` -> routed experts (``fused_experts``) ``+ shared_expert`` when given.
    Args:
        x: ``[T, H]``. router_logits: ``[T, E]``, or None with router_weight ``[E, H]`` given
        (logits = ``router_logits_of(x, router_weight)``). experts: stacked weights (BF16 or
        block-FP8, dequantised here). shared: the sigmoid-gated shared expert, or None.
    Returns:
        ``[T, H]`` in ``x.dtype``.
    """
    if (router_logits is None) == (router_weight is None):
        raise ValueError("pass exactly one of router_logits [T, E] and router_weight [E, H]")
    e = experts.w13.shape[0]
    if router_weight is not None:
        if router_weight.shape != (e, x.shape[-1]):
            raise ValueError(
                f"router_weight must be [E={e}, H={x.shape[-1]}], got {tuple(router_weight.shape)}"
            )
        router_logits = router_logits_of(x, router_weight)  # [T, E]
    if x.dim() != 2 or router_logits.dim() != 2 or router_logits.shape[0] != x.shape[0]:
        raise ValueError(
            f"x must be [T, H] and router_logits [T, E], got {tuple(x.shape)}, {tuple(router_logits.shape)}"
        )
    if router_logits.shape[1] != e:
        raise ValueError(f"router_logits has {router_logits.shape[1]} experts, w13 {e}")
    xf = x.float()  # [T, H]
    weights, ids = route_topk(router_logits, top_k, renormalize)  # [T, k]
    w13, w2 = experts.dequantized(torch.float32)
    out = fused_experts(xf, w13, w2, weights, ids)  # [T, H] fp32
    if shared is not None:
        s13, s2 = shared.dequantized(torch.float32)
        out = out + shared_expert(xf, s13, s2, shared.gate_weight.float())
    return out.to(x.dtype)
