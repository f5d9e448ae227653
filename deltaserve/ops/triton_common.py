"""Triton pieces shared by the op families: whether kernels run under the CPU interpreter, the torch ->
Triton map of 16-bit activation dtypes, and a dot product the interpreter computes correctly."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# TRITON_INTERPRET=1 runs the kernels on CPU tensors (the default test run). Its numpy-backed tl.dot
# mis-computes bf16/fp16 operands (triton 3.9), so kernels widen them to fp32 there (``dot``'s F32).
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"
TL_DTYPE = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def dot(a, b, F32: tl.constexpr, acc=None):
    """``a @ b`` (``+ acc``) accumulated in fp32; ``F32`` (pass ``INTERPRET``): the operands widened to
    fp32 first."""
    if F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)
