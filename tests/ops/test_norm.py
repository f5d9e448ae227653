"""CPU tests of the reference RMSNorms against HF transformers' modules and naive formulas."""

import pytest
import torch
from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextRMSNorm, Qwen3NextRMSNormGated

from deltaserve.ops.fp8 import block_fp8_linear, per_token_group_quant_fp8
from deltaserve.ops.fp8.reference import FP8_DTYPE, quantize_block_fp8
from deltaserve.ops.norm import add_rms_norm, add_rms_norm_fp8, gated_rms_norm, rms_norm, rms_norm_fp8


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


def _dequant(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return q.float() * s.repeat_interleave(128, dim=-1)  # [..., H]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 256), (2, 3, 384), (1, 128)])
def test_add_rms_norm_fp8_is_norm_then_quant(shape, dtype):
    g = torch.Generator().manual_seed(4)
    h = shape[-1]
    x = (torch.randn(shape, generator=g) * torch.rand(*shape[:-1], 1, generator=g) * 5).to(dtype)
    res = torch.randn(shape, generator=g).to(dtype)
    w = (torch.randn(h, generator=g) * 0.1).to(dtype)
    q, s, new_res = add_rms_norm_fp8(x, res, w, 1e-6)
    out, ref_res = add_rms_norm(x, res, w, 1e-6)
    rq, rs = per_token_group_quant_fp8(out.reshape(-1, h), 128)
    assert q.dtype == FP8_DTYPE and q.shape == shape
    assert s.dtype == torch.float32 and s.shape == (*shape[:-1], h // 128)
    assert torch.equal(new_res, ref_res)
    assert torch.equal(q.view(torch.uint8).reshape(-1, h), rq.view(torch.uint8))
    assert torch.equal(s.reshape(-1, h // 128), rs)
    # the format itself: scale = group amax / 448, values within e4m3 rounding (3 mantissa bits)
    amax = out.float().reshape(*shape[:-1], h // 128, 128).abs().amax(-1)
    torch.testing.assert_close(s, amax / 448.0, rtol=0, atol=0)
    err = (_dequant(q, s) - out.float()).abs()
    assert (err <= out.float().abs() * 2**-4 + s.repeat_interleave(128, dim=-1) * 2**-10).all()


@pytest.mark.parametrize("zero_centered", [True, False])
def test_rms_norm_fp8_is_norm_then_quant(zero_centered):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 2, 256, generator=g).to(torch.bfloat16)
    w = torch.randn(256, generator=g) * 0.3
    q, s = rms_norm_fp8(x, w, 1e-6, zero_centered=zero_centered)
    rq, rs = per_token_group_quant_fp8(rms_norm(x, w, 1e-6, zero_centered=zero_centered).reshape(-1, 256))
    assert q.shape == x.shape and s.shape == (4, 2, 2)
    assert torch.equal(q.view(torch.uint8).reshape(-1, 256), rq.view(torch.uint8))
    assert torch.equal(s.reshape(-1, 2), rs)


def test_add_rms_norm_fp8_feeds_fp8_gemm():
    """``(x_q, x_scale)`` into the GEMM == the bf16 norm output quantised by the GEMM itself."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5, 384, generator=g).to(torch.bfloat16)
    res = torch.randn(5, 384, generator=g).to(torch.bfloat16)
    w = torch.randn(384, generator=g) * 0.1
    wq, ws = quantize_block_fp8(torch.randn(200, 384, generator=g) * 0.05)
    rb = torch.arange(200) // 128
    q, s, _ = add_rms_norm_fp8(x, res, w, 1e-6)
    out, _ = add_rms_norm(x, res, w, 1e-6)
    y = block_fp8_linear(q, wq, ws, rb, x_scale=s)
    assert y.dtype == torch.bfloat16 and y.shape == (5, 200)
    assert torch.equal(y, block_fp8_linear(out, wq, ws, rb, quantize_activation=True))
    y32 = block_fp8_linear(q, wq, ws, rb, x_scale=s, out_dtype=torch.float32)
    torch.testing.assert_close(y32.to(torch.bfloat16), y, rtol=0, atol=0)


def test_fp8_norm_errors():
    x = torch.randn(3, 200)
    with pytest.raises(ValueError, match="x last dim"):
        rms_norm_fp8(x, torch.zeros(200), 1e-6)
    with pytest.raises(ValueError, match="x last dim"):
        add_rms_norm_fp8(x, torch.randn(3, 200), torch.zeros(200), 1e-6)
    x = torch.randn(3, 256)
    with pytest.raises(ValueError, match="residual"):
        add_rms_norm_fp8(x, torch.randn(3, 128), torch.zeros(256), 1e-6)
    with pytest.raises(ValueError, match="weight"):
        add_rms_norm_fp8(x, torch.randn(3, 256), torch.zeros(128), 1e-6)
    with pytest.raises(ValueError, match="eps"):
        rms_norm_fp8(x, torch.zeros(256), -1.0)
