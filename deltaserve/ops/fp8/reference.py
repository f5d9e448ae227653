"""Plain-torch reference of block-FP8 (e4m3, 128×128 blocks) weights and dynamic activation quant.

Weights are stored `w_q [..., N, K]` float8_e4m3fn with `scale_inv [..., NB, ceil(K/bk)]` fp32 so that
`W[n, k] ≈ w_q[n, k] * scale_inv[row_block[n], k // bk]`. `row_block [N]` maps each weight row to its
scale row: `n // bn` for a plain checkpoint tensor, offset per shard for merged parameters, permuted
for Qwen3-Next's de-interleaved projections. `row_block=None` is the plain map with `bn = 128`
(`PLAIN_BN`), which the GPU GEMMs turn into one scale per 128-row tile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
PLAIN_BN = 128  # scale-block rows of the plain row map (row_block None)

__all__ = [
    "check_prequantized",
    "dequant_block_fp8",
    "block_fp8_linear",
    "per_token_group_quant_fp8",
    "quantize_block_fp8",
]


def dequant_block_fp8(
    w_q: torch.Tensor, scale_inv: torch.Tensor, row_block: torch.Tensor | None, block_k: int
) -> torch.Tensor:
    """`w_q [..., N, K]`, `scale_inv [..., NB, KB]`, `row_block [N]` (None: `n // 128`) -> fp32 `[..., N, K]`."""
    if row_block is None:
        row_block = torch.arange(w_q.shape[-2], device=scale_inv.device) // PLAIN_BN
        if scale_inv.shape[-2] < -(-w_q.shape[-2] // PLAIN_BN):
            raise ValueError(
                f"scale_inv has {scale_inv.shape[-2]} rows, row_block=None needs ceil(N/{PLAIN_BN})"
            )
    if w_q.shape[-2] != row_block.shape[0]:
        raise ValueError(f"row_block has {row_block.shape[0]} entries, weight has {w_q.shape[-2]} rows")
    k = w_q.shape[-1]
    if scale_inv.shape[-1] != -(-k // block_k):
        raise ValueError(f"scale_inv last dim {scale_inv.shape[-1]} != ceil(K={k} / {block_k})")
    rows = scale_inv.float().index_select(-2, row_block.to(scale_inv.device))  # [..., N, KB]
    return w_q.float() * rows.repeat_interleave(block_k, dim=-1)[..., :k]  # [..., N, K]


def per_token_group_quant_fp8(x: torch.Tensor, group: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic activation quant: `x [M, K]` -> `(x_q [M, K] e4m3, scales [M, ceil(K/group)] fp32)`."""
    if x.dim() != 2:
        raise ValueError(f"x must be [M, K], got {tuple(x.shape)}")
    if not isinstance(group, int) or group <= 0:
        raise ValueError(f"group must be a positive int, got {group!r}")
    m, k = x.shape
    kb = -(-k // group)
    padded = F.pad(x.float(), (0, kb * group - k)).view(m, kb, group)  # [M, KB, G]
    amax = padded.abs().amax(-1).clamp_min(1e-10)  # [M, KB]
    scales = amax / FP8_MAX  # [M, KB]
    q = (padded / scales[..., None]).clamp(-FP8_MAX, FP8_MAX).view(m, kb * group)[:, :k].to(FP8_DTYPE)
    return q, scales


def check_prequantized(x: torch.Tensor, x_scale: torch.Tensor, block_k: int) -> None:
    """Pre-quantised activations: ``x [M, K]`` e4m3 with fp32 ``x_scale [M, ceil(K/block_k)]``."""
    if x.dim() != 2 or x.dtype != FP8_DTYPE:
        raise ValueError(f"x must be a 2-D {FP8_DTYPE} tensor with x_scale, got {tuple(x.shape)} {x.dtype}")
    m, k = x.shape
    if x_scale.shape != (m, -(-k // block_k)) or x_scale.dtype != torch.float32:
        raise ValueError(
            f"x_scale must be float32 [{m}, ceil(K={k}/{block_k})], got {tuple(x_scale.shape)} {x_scale.dtype}"
        )
    if x_scale.device != x.device:
        raise ValueError(f"x_scale must be on x's device {x.device}, got {x_scale.device}")


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
    """`y = x Wᵀ (+ b)` with a block-FP8 weight. `x [M, K]` -> `[M, N]` in `x.dtype`.

    With `quantize_activation`, `x` is first quantised per token and `block_k`-wide group (the W8A8 math
    the GPU kernel computes); otherwise the weight is dequantised and the product is fp32 (W8A16).
    With `x_scale [M, ceil(K/block_k)]`, `x` is already quantised (e4m3, as `per_token_group_quant_fp8`
    with `group=block_k` returns it): W8A8 on those activations, output in `out_dtype` (bf16 default).
    """
    _check_linear(x, w_q, scale_inv, row_block, bias)
    if x_scale is not None:
        if quantize_activation:
            raise ValueError("quantize_activation must be False with x_scale (x is already quantised)")
        check_prequantized(x, x_scale, block_k)
        xq, xs, y_dtype = x, x_scale, out_dtype or torch.bfloat16
    else:
        if out_dtype is not None:
            raise ValueError("out_dtype is only for pre-quantised x (with x_scale); the output is x.dtype")
        if not x.dtype.is_floating_point or x.dtype == FP8_DTYPE:
            raise ValueError(
                f"x must be bfloat16, float16 or float32 (e4m3 only with x_scale), got {x.dtype}"
            )
        xq, xs = per_token_group_quant_fp8(x.float(), block_k) if quantize_activation else (x, None)
        y_dtype = x.dtype
    xf = xq.float()  # [M, K]
    if xs is not None:  # dequantise the activation groups
        xf = xf * xs.float().repeat_interleave(block_k, dim=-1)[:, : x.shape[-1]]
    y = F.linear(xf, dequant_block_fp8(w_q, scale_inv, row_block, block_k))  # [M, N]
    if bias is not None:
        y = y + bias.float()
    return y.to(y_dtype)


def _check_linear(
    x: torch.Tensor, w_q: torch.Tensor, scale_inv: torch.Tensor, row_block: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> None:  # fmt: skip
    """``block_fp8_linear``'s operands, one ValueError naming the first bad one (the reference may read
    row_block's values: it is not the CUDA-graph path)."""
    if w_q.dim() != 2 or w_q.dtype != FP8_DTYPE:
        raise ValueError(f"w_q must be a 2-D {FP8_DTYPE} tensor, got {tuple(w_q.shape)} {w_q.dtype}")
    n, k = w_q.shape
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x must be [..., K={k}] for w_q [{n}, {k}], got {tuple(x.shape)}")
    if scale_inv.dim() != 2 or not scale_inv.dtype.is_floating_point:
        raise ValueError(f"scale_inv must be a 2-D float tensor [NB, KB], got {tuple(scale_inv.shape)}")
    if (
        row_block is not None
        and row_block.numel()
        and (int(row_block.min()) < 0 or int(row_block.max()) >= scale_inv.shape[0])
    ):
        raise ValueError(f"row_block entries must lie in [0, {scale_inv.shape[0]}) (scale_inv's rows)")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must be [{n}], got {tuple(bias.shape)}")


def quantize_block_fp8(
    w: torch.Tensor, block_n: int = 128, block_k: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block quantisation (for tests and benchmarks; runs on ``w``'s device, batched over leading dims).

    ``w [..., N, K]`` -> ``(w_q [..., N, K] e4m3, scale_inv [..., ceil(N/bn), ceil(K/bk)] fp32)`` with
    ``scale = amax / 448`` per block (1 for all-zero blocks); pair with ``row_block = arange(N) // bn``.
    """
    *lead, n, k = w.shape
    nb, kb = -(-n // block_n), -(-k // block_k)
    padded = F.pad(w.float(), (0, kb * block_k - k, 0, nb * block_n - n))  # [..., NB*bn, KB*bk]
    blocks = padded.view(*lead, nb, block_n, kb, block_k)
    amax = blocks.abs().amax(dim=(-3, -1))  # [..., NB, KB]
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (blocks / scale[..., :, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    q = q.view(*lead, nb * block_n, kb * block_k)[..., :n, :k].contiguous()
    return q, scale.contiguous()
