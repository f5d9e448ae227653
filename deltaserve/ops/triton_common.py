"""Triton pieces shared by the op families: whether kernels run under the CPU interpreter, the torch ->
Triton map of 16-bit activation dtypes, a dot product the interpreter computes correctly, and an L2
prefetch hint."""

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


@triton.jit
def prefetch_l2(ptrs):
    """Ask for the memory lines at ``ptrs`` in L2 (``prefetch.global.L2``): a hint that nothing waits for
    and that cannot read stale data (L2 is where the SMs' writes meet). For loads that don't depend on the
    previous kernel, issued before a PDL wait. Not for the CPU interpreter (inline PTX)."""
    tl.inline_asm_elementwise(
        "prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1
    )
