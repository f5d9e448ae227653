"""Triton norm kernels vs the reference: GPU tests (``-m gpu``) and a tiny TRITON_INTERPRET=1 CPU run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch


def _tol(dtype: torch.dtype) -> dict:
    return dict(rtol=1.6e-2, atol=1e-2) if dtype != torch.float32 else dict(rtol=1e-5, atol=1e-5)


def _inputs(shape, dtype, device, strided, seed):
    torch.manual_seed(seed)
    if strided:  # a head-sized slice of a wider fused projection: row strides != H
        big = torch.randn(*shape[:-1], 2 * shape[-1] + 8, dtype=dtype, device=device)
        return big[..., 8 : 8 + shape[-1]]
    return torch.randn(shape, dtype=dtype, device=device) * 2


def check_norms(device, shape, dtype, strided=False, seed=0, weight_dtype=None):
    from deltaserve.ops.norm import kernels, reference

    h = shape[-1]
    x = _inputs(shape, dtype, device, strided, seed)
    res = _inputs(shape, dtype, device, False, seed + 1)
    z = _inputs(shape, dtype, device, strided, seed + 2)
    w = (torch.randn(h, device=device) * 0.2).to(weight_dtype or dtype)
    for zc in (True, False):
        torch.testing.assert_close(
            kernels.rms_norm(x, w, 1e-6, zero_centered=zc),
            reference.rms_norm(x, w, 1e-6, zero_centered=zc),
            **_tol(dtype),
        )
    out_k, nr_k = kernels.add_rms_norm(x, res, w, 1e-6)
    out_r, nr_r = reference.add_rms_norm(x, res, w, 1e-6)
    assert torch.equal(nr_k, nr_r)
    torch.testing.assert_close(out_k, out_r, **_tol(dtype))
    g = kernels.gated_rms_norm(x, z, w + 1, 1e-6)
    torch.testing.assert_close(g, reference.gated_rms_norm(x, z, w + 1, 1e-6), **_tol(dtype))
    assert not g.isnan().any() and not out_k.isnan().any()


def run_small(device: str) -> None:
    check_norms(device, (5, 48), torch.float32)
    check_norms(device, (3, 4, 16), torch.float32, strided=True)
    check_norms(device, (2, 3, 2, 20), torch.float32)


def test_triton_interpret_cpu():
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(
    "shape,strided",
    [((1, 2048), False), ((257, 2048), False), ((1000, 5120), False), ((37, 4096 + 8), False),
     ((300, 32, 128), True), ((9, 16, 256), True), ((3, 7, 100), False), ((1, 1, 8192), False)],
)  # fmt: skip
def test_norms_gpu(shape, strided, dtype):
    check_norms("cuda", shape, dtype, strided=strided)


@pytest.mark.gpu
def test_gated_fp32_weight_bf16_input_gpu():
    check_norms("cuda", (65, 16, 128), torch.bfloat16, weight_dtype=torch.float32)


@pytest.mark.gpu
def test_norm_rejects_unmergeable_view_gpu():
    from deltaserve.ops.norm import rms_norm

    x = torch.randn(4, 6, 8, 32, device="cuda")[:, :3]  # [4, 3, 8, 32]: dims 0-1 not mergeable
    with pytest.raises(ValueError, match="x"):
        rms_norm(x, torch.zeros(32, device="cuda"), 1e-6)


if __name__ == "__main__":
    run_small("cuda" if torch.cuda.is_available() and not os.environ.get("TRITON_INTERPRET") else "cpu")
    print("ok")
