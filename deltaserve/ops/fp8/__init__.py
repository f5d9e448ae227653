"""Block-FP8 weights (e4m3, 128×128 scales) and dynamic per-token-group activation quantisation.

- ``block_fp8_linear(x [M, K], w_q [N, K], scale_inv [NB, KB], row_block [N] | None, bias, *, block_k,
  quantize_activation, x_scale, out_dtype) -> [M, N]`` (``x_scale``: ``x`` is pre-quantised e4m3;
  ``row_block`` None: the plain map ``n // 128``, the GPU kernels' fast path)
- ``per_token_group_quant_fp8(x [M, K], group) -> (x_q [M, K] e4m3, scales [M, ceil(K/group)])``
- ``dequant_block_fp8(w_q [..., N, K], scale_inv, row_block, block_k) -> fp32 [..., N, K]`` (torch)

CUDA inputs of the first two go to the Triton kernels (``kernels.py``), anything else to the fp32
torch reference (``reference.py``).
"""

from __future__ import annotations

import torch

from deltaserve.ops.fp8 import reference
from deltaserve.ops.fp8.reference import FP8_DTYPE, dequant_block_fp8

__all__ = ["FP8_DTYPE", "block_fp8_linear", "dequant_block_fp8", "per_token_group_quant_fp8"]


def block_fp8_linear(
    x: torch.Tensor,
    w_q: torch.Tensor,
    scale_inv: torch.Tensor,
    row_block: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    *,
    block_k: int = 128,
    quantize_activation: bool = False,
    x_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``y = x Wᵀ (+ b)`` with a block-FP8 weight: ``x [M, K]`` -> ``[M, N]`` in ``x.dtype``.

    ``quantize_activation=False`` is W8A16 (dequantised weight, fp32 accumulation); ``True`` is W8A8
    with dynamic per-token 1×``block_k`` activation groups (what FP8 serving stacks run).
    Pre-quantised activations (W8A8 without the quant step): ``x [M, K]`` e4m3 with
    ``x_scale [M, ceil(K/block_k)]`` fp32, as ``per_token_group_quant_fp8(., block_k)`` or the fp8-output
    norms return them; the output is then ``out_dtype`` (default bfloat16).
    """
    if x.is_cuda and x.dim() == 2 and (x.dtype in (torch.bfloat16, torch.float16) or x_scale is not None):
        return _kernels().block_fp8_linear(
            x, w_q, scale_inv, row_block, bias, block_k=block_k, quantize_activation=quantize_activation,
            x_scale=x_scale, out_dtype=out_dtype,
        )  # fmt: skip
    return reference.block_fp8_linear(
        x, w_q, scale_inv, row_block, bias, block_k=block_k, quantize_activation=quantize_activation,
        x_scale=x_scale, out_dtype=out_dtype,
    )  # fmt: skip


def per_token_group_quant_fp8(x: torch.Tensor, group: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic activation quant: ``x [M, K]`` -> ``(x_q [M, K] e4m3, scales [M, ceil(K/group)] fp32)``."""
    impl = _kernels() if x.is_cuda else reference
    return impl.per_token_group_quant_fp8(x, group)


def _kernels():
    from deltaserve.ops.fp8 import kernels

    return kernels
