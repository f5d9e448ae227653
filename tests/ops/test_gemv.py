"""Decode GEMV (``ops.gemv``) vs its fp32 reference: a TRITON_INTERPRET=1 CPU run, sm_90 compile
checks, the dispatcher's CPU fallback, and GPU tests at Qwen3-Next projection shapes (``-m gpu``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

# Qwen3-Next-80B-A3B projections at one token: (N, K)
QWEN3_NEXT_SHAPES = [(12352, 2048), (2048, 4096), (9216, 2048), (1024, 2048), (64, 2048)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def check_linear(device, n, k, dtype=torch.bfloat16, bias=False, seed=0):
    """Kernel == reference up to one output rounding; NaN in one weight row reaches only its output."""
    from deltaserve.ops.gemv import kernels, reference

    g = torch.Generator().manual_seed(seed + n + k)
    x = torch.randn(1, k, generator=g).to(device, dtype)
    w = (torch.randn(n, k, generator=g) / k**0.5).to(device, dtype)
    b = torch.randn(n, generator=g).to(device, dtype) if bias else None
    w[n // 2, k // 3] = float("nan")
    got = kernels.linear(x, w, b)
    ref = reference.linear(x, w, b)
    assert got.shape == (1, n) and got.dtype == dtype
    nan = ref.isnan()
    assert torch.equal(got.isnan(), nan) and int(nan.sum()) == 1
    ulp = torch.finfo(dtype).eps * ref[~nan].float().abs() + 1e-6
    assert ((got[~nan].float() - ref[~nan].float()).abs() <= 2 * ulp).all(), rel_err(got[~nan], ref[~nan])
    assert torch.equal(got, kernels.linear(x, w, b)) or nan.any()  # deterministic (NaN != NaN)


def check_errors(device):
    from deltaserve.ops.gemv import kernels

    x = torch.randn(1, 32, device=device, dtype=torch.bfloat16)
    w = torch.randn(8, 32, device=device, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="weight must be"):
        kernels.linear(x, w[:, :16])
    with pytest.raises(ValueError, match="weight .* must match x"):
        kernels.linear(x, w.float())
    with pytest.raises(ValueError, match="bias must be"):
        kernels.linear(x, w, torch.zeros(7, device=device, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="one bf16/fp16"):
        kernels.linear(torch.cat([x, x]), w)
    with pytest.raises(ValueError, match="unit last stride"):
        kernels.linear(
            x, torch.randn(32, 16, device=device, dtype=torch.bfloat16).T
        )  # [16, 32], strides (1, 16)
    assert kernels.linear(x, w[:0]).shape == (1, 0)


def run_small(device: str) -> None:
    check_linear(device, 37, 100)  # K not a multiple of the step, partial row tile
    check_linear(device, 64, 512, bias=True)
    check_linear(device, 8, 1024, dtype=torch.float16, bias=True)  # several K steps
    check_linear(device, 3, 16)
    check_errors(device)


def test_gemv_interpret_cpu():
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dispatch_falls_back_to_torch_on_cpu():
    """Off CUDA (and for several rows or fp32) the op is exactly ``F.linear``: CPU numerics unchanged."""
    from deltaserve.ops import gemv

    x = torch.randn(1, 64, dtype=torch.bfloat16)
    w = torch.randn(32, 64, dtype=torch.bfloat16)
    b = torch.randn(32, dtype=torch.bfloat16)
    assert torch.equal(gemv.linear(x, w, b), F.linear(x, w, b))
    x3 = torch.randn(3, 64)
    assert torch.equal(gemv.linear(x3, w.float()), F.linear(x3, w.float()))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("even", [False, True])
def test_gemv_kernel_compiles(bias, even):
    triton_compile = pytest.importorskip("deltaserve.testing.triton_compile")
    from deltaserve.ops.gemv import kernels as K

    _, bn, bk, warps, stages = K.CONFIGS[0]
    ptr = dict(x_ptr="*bf16", w_ptr="*bf16", b_ptr="*bf16", y_ptr="*bf16")
    const = dict(HAS_BIAS=bias, BN=bn, BK=bk, EVEN_K=even, PDL=False)
    k = triton_compile.compile_for_hopper(K._gemv_kernel, ptr, const, num_warps=warps, num_stages=stages)
    ptx = k.asm["ptx"]
    assert ".local" not in ptx and "st.global" in ptx


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", QWEN3_NEXT_SHAPES)
def test_gemv_qwen3_next_shapes_gpu(n, k):
    check_linear("cuda", n, k)
    check_linear("cuda", n, k, dtype=torch.float16, bias=True)


@pytest.mark.gpu
def test_gemv_errors_and_dispatch_gpu():
    from deltaserve.ops import gemv

    check_errors("cuda")
    x = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(512, 2048, device="cuda", dtype=torch.bfloat16) / 45
    torch.testing.assert_close(gemv.linear(x, w), F.linear(x, w), rtol=1e-2, atol=1e-2)
    x2 = torch.randn(2, 2048, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(gemv.linear(x2, w), F.linear(x2, w))  # two rows: cuBLAS


@pytest.mark.gpu
def test_gemv_in_cuda_graph():
    from deltaserve.ops.gemv import kernels

    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2048, 4096, device="cuda", dtype=torch.bfloat16) / 64
    want = kernels.linear(x, w)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernels.linear(x, w)
    x.copy_(torch.randn_like(x))
    graph.replay()
    assert torch.equal(out, kernels.linear(x, w)) and not torch.equal(out, want)


if __name__ == "__main__":
    run_small("cpu")
    print("ok")
