"""Dense projection for the decode step: ``linear(x [M, K], weight [N, K], bias) -> [M, N]``.

One bf16/fp16 row on CUDA goes to the Triton GEMV (``kernels.py``; 1.05-1.36x cuBLAS on an H100 at
Qwen3-Next's projections and LM head). Anything else goes to ``torch.nn.functional.linear`` (cuBLAS
on the GPU, the CPU GEMM on the host, so CPU numerics are exactly torch's). ``reference.py`` holds
the fp32 math the kernel is tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["linear"]

ENABLED = True  # False: every call goes to F.linear (benchmarks compare both)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x Wᵀ (+ b)``; see the module docstring for which implementation runs."""
    if (
        ENABLED
        and x.is_cuda
        and x.dim() == 2
        and x.shape[0] == 1
        and x.dtype in (torch.bfloat16, torch.float16)
        and weight.dtype == x.dtype
        and weight.stride(-1) == 1
    ):
        from deltaserve.ops.gemv import kernels

        return kernels.linear(x, weight, bias)
    return F.linear(x, weight, bias)
