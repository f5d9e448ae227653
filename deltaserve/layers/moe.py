"""Sparse MoE block: softmax top-k router, SwiGLU experts, sigmoid-gated shared expert."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deltaserve.layers.linear import ReplicatedLinear
from deltaserve.layers.mlp import SwiGLUMLP
from deltaserve.layers.weights import WeightShapeError, check_shape, make_param
from deltaserve.ops.fp8 import FP8_DTYPE, dequant_block_fp8
from deltaserve.ops.moe import ExpertWeights, SharedExpertWeights, fused_experts, fused_moe, route_topk


def _expert_loader(per_expert_rows: dict[str, tuple[int, int]] | None):
    """Loader for a stacked expert tensor `[E, rows, cols]`.

    Shard ids: `None` (the whole stacked tensor, fused-expert checkpoints), or `(e, name)` /
    `e` for one expert's tensor (per-expert checkpoints), `name` selecting a row range.
    """

    def load(param: nn.Parameter, loaded: torch.Tensor, shard_id: Any = None) -> None:
        if shard_id is None:
            check_shape(param.shape, loaded, "stacked experts")
            param.data.copy_(loaded)
            return
        expert, name = shard_id if isinstance(shard_id, tuple) else (shard_id, None)
        if not 0 <= expert < param.shape[0]:
            raise WeightShapeError(f"expert index {expert} out of range (num_experts={param.shape[0]})")
        target = param.data[expert]
        if name is not None:
            if per_expert_rows is None or name not in per_expert_rows:
                raise WeightShapeError(f"unknown expert shard {name!r}")
            start, size = per_expert_rows[name]
            target = target.narrow(0, start, size)
        check_shape(target.shape, loaded, f"expert {expert} {name or ''}".strip())
        target.copy_(loaded)

    return load


class FusedExperts(nn.Module):
    """All routed experts, stacked: `gate_up_proj [E, 2I, H]` (gate rows, then up), `down_proj [E, H, I]`.

    Loads either HF's stacked tensors or per-expert `experts.{e}.{gate,up,down}_proj.weight`.
    """

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, *, dtype, device=None):
        super().__init__()
        e, h, i = num_experts, hidden_size, intermediate_size
        self.num_experts = e
        self.gate_up_proj = make_param(
            (e, 2 * i, h),
            dtype,
            device,
            weight_loader=_expert_loader({"gate": (0, i), "up": (i, i)}),
            shard_ids=[(x, n) for x in range(e) for n in ("gate", "up")],
        )
        self.down_proj = make_param(
            (e, h, i), dtype, device, weight_loader=_expert_loader(None), shard_ids=list(range(e))
        )

    def expert_weights(self) -> ExpertWeights:
        """The stacked weights (and FP8 scales / row maps when converted) for ``ops.moe.fused_moe``."""
        if self.gate_up_proj.dtype != FP8_DTYPE:
            return ExpertWeights(self.gate_up_proj, self.down_proj)
        return ExpertWeights(
            self.gate_up_proj,
            self.down_proj,
            self.gate_up_proj_scale_inv,
            self.down_proj_scale_inv,
            self.gate_up_row_block,
            self.down_row_block,
            self.fp8_block_k,
        )

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        w13, w2 = self.gate_up_proj, self.down_proj
        if w13.dtype == FP8_DTYPE:  # converted by layers.fp8.apply_fp8: W8A16 through dequantisation
            bk = self.fp8_block_k
            w13 = dequant_block_fp8(w13, self.gate_up_proj_scale_inv, self.gate_up_row_block, bk).to(x.dtype)
            w2 = dequant_block_fp8(w2, self.down_proj_scale_inv, self.down_row_block, bk).to(x.dtype)
        return fused_experts(x, w13, w2, topk_weights, topk_ids)  # [T, H]


class SparseMoeBlock(nn.Module):
    """`Σ_k w_k · Expert_{id_k}(x) + sigmoid(shared_expert_gate(x)) · SharedExpert(x)`."""

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        top_k: int,
        moe_intermediate_size: int,
        shared_expert_intermediate_size: int,
        norm_topk_prob: bool,
        *,
        dtype: torch.dtype,
        device=None,
    ) -> None:
        super().__init__()
        self.top_k, self.norm_topk_prob = top_k, norm_topk_prob
        self.gate = ReplicatedLinear(hidden_size, num_experts, dtype=dtype, device=device)  # router
        self.experts = FusedExperts(
            num_experts, hidden_size, moe_intermediate_size, dtype=dtype, device=device
        )
        self.shared_expert = SwiGLUMLP(
            hidden_size, shared_expert_intermediate_size, dtype=dtype, device=device
        )
        self.shared_expert_gate = ReplicatedLinear(hidden_size, 1, dtype=dtype, device=device)

    def _shared_weights(self) -> SharedExpertWeights | None:
        """Shared expert + gate for the fused GPU path; None when the gate itself is quantised."""
        gu, down, gate = (
            self.shared_expert.gate_up_proj,
            self.shared_expert.down_proj,
            self.shared_expert_gate,
        )
        if gate.weight.dtype == FP8_DTYPE or gate.bias is not None:
            return None
        if gu.weight.dtype != FP8_DTYPE or down.weight.dtype != FP8_DTYPE:
            if gu.weight.dtype == FP8_DTYPE or down.weight.dtype == FP8_DTYPE:
                return None  # mixed: keep the plain path
            return SharedExpertWeights(gu.weight, down.weight, gate.weight)
        if gu.fp8_block_k != down.fp8_block_k:
            return None
        return SharedExpertWeights(
            gu.weight,
            down.weight,
            gate.weight,
            gu.weight_scale_inv,
            down.weight_scale_inv,
            gu.weight_row_block,
            down.weight_row_block,
            gu.fp8_block_k,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, H] -> [T, H]
        if x.is_cuda and x.dim() == 2 and x.dtype in (torch.bfloat16, torch.float16):
            # Triton: routing + shared gate, alignment, fused expert GEMMs (shared expert folded in)
            shared = self._shared_weights()
            gate, ew = self.gate, self.experts.expert_weights()
            if gate.weight.dtype == x.dtype and gate.bias is None:  # router GEMM folded into fused_moe
                out = fused_moe(
                    x, None, self.top_k, self.norm_topk_prob, ew, shared, router_weight=gate.weight
                )
            else:
                out = fused_moe(x, gate(x), self.top_k, self.norm_topk_prob, ew, shared)  # [T, E] logits
            if shared is None:
                out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
            return out
        weights, ids = route_topk(self.gate(x), self.top_k, self.norm_topk_prob)  # [T, k] each
        # HF casts the routing weights to the activation dtype before weighting the experts.
        routed = self.experts(x, weights.to(x.dtype), ids)  # [T, H]
        shared = torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)  # [T, H]
        return routed + shared
