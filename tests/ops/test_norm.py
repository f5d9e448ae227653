"""CPU tests of the reference RMSNorms against HF transformers' modules and naive formulas."""

import pytest
import torch
from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextRMSNorm, Qwen3NextRMSNormGated

from deltaserve.ops.norm import add_rms_norm, gated_rms_norm, rms_norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 8), (5, 3, 64), (7, 130)])
def test_rms_norm_matches_hf(shape, dtype):
    g = torch.Generator().manual_seed(0)
    h = shape[-1]
    mod = Qwen3NextRMSNorm(h, eps=1e-6)
    with torch.no_grad():
        mod.weight.copy_(torch.randn(h, generator=g) * 0.1)
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    ref = mod(x)
    out = rms_norm(x, mod.weight.data, 1e-6)
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_rms_norm_plain_weight():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 32, generator=g, dtype=torch.float64).float()
    w = torch.randn(32, generator=g)
    naive = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * w
    torch.testing.assert_close(rms_norm(x, w, 1e-5, zero_centered=False), naive, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_rms_norm(dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 48, generator=g).to(dtype)
    res = torch.randn(6, 48, generator=g).to(dtype)
    w = torch.randn(48, generator=g) * 0.1
    out, new_res = add_rms_norm(x, res, w, 1e-6)
    torch.testing.assert_close(new_res, x + res, rtol=0, atol=0)
    torch.testing.assert_close(out, rms_norm(x + res, w, 1e-6), rtol=0, atol=0)
    assert out.dtype == dtype and new_res.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 16), (9, 4, 64)])
def test_gated_rms_norm_matches_hf(shape, dtype):
    g = torch.Generator().manual_seed(3)
    d = shape[-1]
    mod = Qwen3NextRMSNormGated(d, eps=1e-6).to(dtype)
    with torch.no_grad():
        mod.weight.copy_(1 + torch.randn(d, generator=g) * 0.1)
    x = torch.randn(shape, generator=g).to(dtype)
    z = torch.randn(shape, generator=g).to(dtype)
    ref = mod(x, z)
    out = gated_rms_norm(x, z, mod.weight.data, 1e-6)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_norm_errors():
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(x, torch.zeros(7), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        add_rms_norm(x, torch.randn(3, 7), torch.zeros(8), 1e-6)
    with pytest.raises(ValueError, match="z"):
        gated_rms_norm(x, torch.randn(3, 9), torch.ones(8), 1e-6)
    with pytest.raises(ValueError, match="eps"):
        rms_norm(x, torch.zeros(8), -1.0)
