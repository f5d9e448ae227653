"""Block-FP8 weights (e4m3, 128×128 scales) and dynamic per-token-group activation quantisation."""

from deltaserve.ops.fp8.reference import (
    FP8_DTYPE,
    block_fp8_linear,
    dequant_block_fp8,
    per_token_group_quant_fp8,
)

__all__ = ["FP8_DTYPE", "block_fp8_linear", "dequant_block_fp8", "per_token_group_quant_fp8"]
