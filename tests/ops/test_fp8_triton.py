"""Triton block-FP8 GEMM and activation quant vs the reference: GPU tests and a TRITON_INTERPRET=1 CPU run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def make_weight(n: int, k: int, layout: str, device, seed: int = 0):
    """Random block-FP8 weight ``[n, k]`` whose row_block is plain, shard-offset, permuted, or None
    (the plain map left implicit: the kernels' per-tile-scale path)."""
    from deltaserve.ops.fp8.reference import quantize_block_fp8

    g = torch.Generator(device="cpu").manual_seed(seed)
    w = (torch.randn(n, k, generator=g) * 0.05).to(device)
    if layout in ("plain", "none"):
        q, s = quantize_block_fp8(w)
        return q, s, (torch.arange(n) // 128).to(device) if layout == "plain" else None
    if layout == "shards":  # merged [a | b] parameter, each shard with its own scale rows
        a = n // 3
        qa, sa = quantize_block_fp8(w[:a])
        qb, sb = quantize_block_fp8(w[a:])
        rb = torch.cat([torch.arange(a) // 128, sa.shape[0] + torch.arange(n - a) // 128])
        return torch.cat([qa, qb]), torch.cat([sa, sb]), rb.to(device)
    q, s = quantize_block_fp8(w)  # permuted rows (de-interleaved projections)
    perm = torch.randperm(n, generator=g).to(device)
    return q[perm].contiguous(), s, (perm // 128).to(device)


def _w8a8_from_kernel_quant(x, q, s, rb, b, block_k=128):
    """W8A8 reference built on the quant kernel's own output (isolates the GEMM from quant rounding)."""
    from deltaserve.ops.fp8 import kernels, reference

    xq, xs = kernels.per_token_group_quant_fp8(x, block_k)
    xf = xq.float() * xs.repeat_interleave(block_k, dim=-1)[:, : x.shape[1]]
    y = xf @ reference.dequant_block_fp8(q, s, rb, block_k).T
    return (y + b.float() if b is not None else y).to(x.dtype)


def check_gemm(
    device, m, n, k, layout, dtype=torch.bfloat16, bias=False, tol_w8a16=1e-2, tol_w8a8=2e-2, own_quant=False
):
    from deltaserve.ops.fp8 import kernels, reference

    q, s, rb = make_weight(n, k, layout, device, seed=m + n + k)
    x = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(n, device=device).to(dtype) if bias else None
    errs = {}
    for qa, tol in ((False, tol_w8a16), (True, tol_w8a8)):
        out = kernels.block_fp8_linear(x, q, s, rb, b, quantize_activation=qa)
        if qa and own_quant:
            ref = _w8a8_from_kernel_quant(x, q, s, rb, b)
        else:
            ref = reference.block_fp8_linear(x, q, s, rb, b, quantize_activation=qa)
        assert out.shape == (m, n) and out.dtype == dtype
        assert not out.isnan().any()
        errs[qa] = rel_err(out, ref)
        assert errs[qa] < tol, (m, n, k, layout, qa, errs[qa])
    return errs


def check_quant(device, m, k, group=128, max_mismatch=0.0):
    from deltaserve.ops.fp8 import kernels, reference

    x = (torch.randn(m, k, device=device) * torch.rand(m, 1, device=device) * 10).to(torch.bfloat16)
    q, s = kernels.per_token_group_quant_fp8(x, group)
    rq, rs = reference.per_token_group_quant_fp8(x, group)
    torch.testing.assert_close(s, rs, rtol=1e-6, atol=0)
    mismatch = (q.float() != rq.float()).float().mean().item()
    assert mismatch <= max_mismatch, mismatch


def check_prequantized(device, m, n, k, layout, out_dtype=None, tol=1e-3):
    """GEMM on activations quantised beforehand (``x_scale``) == the GEMM quantising them itself."""
    from deltaserve.ops.fp8 import kernels, reference

    q, s, rb = make_weight(n, k, layout, device, seed=m + n + k + 1)
    x = (torch.randn(m, k, device=device) * torch.rand(m, 1, device=device) * 4).to(torch.bfloat16)
    b = torch.randn(n, device=device).to(torch.bfloat16) if m % 2 else None
    xq, xs = kernels.per_token_group_quant_fp8(x, 128)
    out = kernels.block_fp8_linear(xq, q, s, rb, b, x_scale=xs, out_dtype=out_dtype)
    assert out.shape == (m, n) and out.dtype == (out_dtype or torch.bfloat16)
    assert not out.isnan().any()
    ref = reference.block_fp8_linear(xq, q, s, rb, b, x_scale=xs, out_dtype=out_dtype)
    assert rel_err(out, ref) < 1e-2, (m, n, k, rel_err(out, ref))
    if out_dtype is None:  # same quantised activations as the bf16 W8A8 path: only accumulation order
        err = rel_err(out, kernels.block_fp8_linear(x, q, s, rb, b, quantize_activation=True))
        assert err < tol, (m, n, k, err)


def check_tma(device, m, n, k):
    """The TMA W8A8 kernel (plain rows) == the plain-load kernel on the same quantised activations."""
    from deltaserve.ops.fp8 import kernels

    q, s, _ = make_weight(n, k, "none", device, seed=m + k)
    x = torch.randn(m, k, device=device).to(torch.bfloat16)
    b = torch.randn(n, device=device).to(torch.bfloat16)
    xq, xs = kernels.per_token_group_quant_fp8(x, 128)
    out = kernels._gemm_tma(xq, xs, q, s, b, torch.empty(m, n, dtype=torch.bfloat16, device=device), 128)
    ref = kernels.block_fp8_linear(xq, q, s, torch.arange(n, device=device) // 128, b, x_scale=xs)
    assert not out.isnan().any()
    assert rel_err(out, ref) < 1e-2, rel_err(out, ref)


def check_split_k(device, m, n, k, layout="plain"):
    """Small M over a long K takes the one-launch split-K path: right, repeatable, counters reset."""
    from deltaserve.ops.fp8 import kernels

    q, s, rb = make_weight(n, k, layout, device, seed=k)
    x = torch.randn(m, k, device=device).to(torch.bfloat16)
    b = torch.randn(n, device=device).to(torch.bfloat16)
    for w8a8 in (False, True):
        tile = kernels.small_tile(n, w8a8, layout != "none")
        assert -(-n // tile.bn) < tile.target and k // kernels.BK >= 4  # so split > 1
    with kernels.config_restored():
        kernels.CONFIG["gemv_m_max"] = 0  # small M would take the streaming GEMV
        check_gemm(device, m, n, k, layout, bias=True, tol_w8a16=1e-2, tol_w8a8=1e-2, own_quant=True)
        first = kernels.block_fp8_linear(x, q, s, rb, b)
        again = kernels.block_fp8_linear(x, q, s, rb, b)
    assert torch.equal(first, again)
    assert int(kernels._tile_counters(x.device, 1).abs().sum()) == 0


def check_small_forms(device, m, n, k, layout, dtype=torch.bfloat16, tol=1e-2):
    """The small-M kernel in both forms (activations on the MMA's row side, and swap-AB), each PDL mode
    and one or many splits, for W8A16, pre-quantised and inline-quantised W8A8 (through row maps too,
    whose W8A8 tiers ship only the swap-AB form), against the references."""
    from deltaserve.ops.fp8 import kernels, reference

    q, s, rb = make_weight(n, k, layout, device, seed=m * 7 + n + k)
    x = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(n, device=device).to(dtype) if m % 2 else None
    xq, xs = kernels.per_token_group_quant_fp8(x, 128)
    refs = {
        "w8a16": reference.block_fp8_linear(x, q, s, rb, b),
        "pre": reference.block_fp8_linear(xq, q, s, rb, b, x_scale=xs, out_dtype=dtype),
        "w8a8": _w8a8_from_kernel_quant(x, q, s, rb, b),
    }
    for swap, pdl, target, prefetch in (
        (False, 1, 264, 1),
        (False, 2, 1, 2),
        (True, 2, 264, 1),
        (True, 0, 1, 0),
    ):
        tile = kernels.SmallTile(swap, 64, 4, 3, target, pdl, prefetch)
        with kernels.config_restored():
            tiers = ((0, tile),)
            kernels.CONFIG.update({key: tiers for key in kernels.SMALL_TIERS}, gemv_m_max=0)
            outs = {
                "w8a16": kernels.block_fp8_linear(x, q, s, rb, b),
                "pre": kernels.block_fp8_linear(xq, q, s, rb, b, x_scale=xs, out_dtype=dtype),
                "w8a8": kernels.block_fp8_linear(x, q, s, rb, b, quantize_activation=True),
            }
        for name, out in outs.items():
            assert out.shape == (m, n) and out.dtype == dtype and not out.isnan().any()
            err = rel_err(out, refs[name])
            assert err < tol, (m, n, k, layout, swap, pdl, target, name, err)


def check_extreme_rows(device):
    """Rows of very large, very small and zero activations through the row form's fp16 widening (each
    row is scaled by a power of two into fp16's range): every row within bf16 rounding of the reference."""
    from deltaserve.ops.fp8 import kernels, reference

    q, s, rb = make_weight(256, 384, "none", device, seed=1)
    x = torch.randn(5, 384, device=device)
    x[1] *= 1e30
    x[2] *= 1e-30
    x[3] = 0
    x[4, :200] *= 1e6  # one row spanning 2^20 within a K step
    x = x.bfloat16()
    with kernels.config_restored():
        kernels.CONFIG.update(gemv_m_max=0, small=((0, kernels.SmallTile(False, 64, 4, 3, 264, 0)),))
        out = kernels.block_fp8_linear(x, q, s, rb).float()
    ref = reference.block_fp8_linear(x, q, s, rb).float()
    assert torch.equal(out[3], torch.zeros_like(out[3]))
    for r in (0, 1, 2, 4):  # per-row relative error, the scale divided out first (fp32 norms overflow)
        scale = ref[r].abs().max()
        err = ((out[r] - ref[r]) / scale).norm() / (ref[r] / scale).norm()
        assert err < 1e-2, (r, err.item())


def check_gemv(device, n, k, block_k=128, config=None, layout="none", m=1):
    """The streaming GEMV (``m`` activation rows, strided when ``m`` > 1) for bf16, pre-quantised and
    W8A8 activations, against the references and against the small-M MMA kernel on the same call;
    ``config`` overrides the GEMV's tiers; ``layout`` as in ``make_weight`` (block_k 128 there)."""
    from deltaserve.ops.fp8 import kernels, reference

    torch.manual_seed(n * 31 + k + m)
    if layout == "none":
        q, s = reference.quantize_block_fp8(torch.randn(n, k, device=device) * 0.05, 128, block_k)
        rb = None
    else:
        q, s, rb = make_weight(n, k, layout, device, seed=n + k)
    x = torch.randn(m, k + 24 * (m > 1), device=device).to(torch.bfloat16)[:, :k]  # rows k + 24 apart
    b = torch.randn(n, device=device).to(torch.bfloat16) if n % 2 else None
    xq, xs = kernels.per_token_group_quant_fp8(x, block_k)
    # the W8A8 path's activation: the quant kernel's values times their group scales, exactly
    fq = kernels.fake_quant(x, block_k)
    assert torch.equal(fq, xq.float() * xs.repeat_interleave(block_k, dim=1)[:, :k])
    outs = {}
    calls = (("w8a16", x, {}), ("pre", xq, dict(x_scale=xs)), ("w8a8", x, dict(quantize_activation=True)))
    with kernels.config_restored() as saved:
        if config:
            kernels.CONFIG.update(
                {key: ((0, config),) for key in ("gemv", "gemv_w8a8", "gemv_rows", "gemv_rows_w8a8")}
            )
        kernels.CONFIG["gemv_m_max"] = max(m, saved["gemv_m_max"])
        assert kernels.gemv.supports(0, block_k, kernels.gemv_config(n, m=m))
        for name, xin, kw in calls:
            outs[name] = kernels.block_fp8_linear(xin, q, s, rb, b, block_k=block_k, **kw)
            if name == "w8a8":  # on the quant kernel's own values (see check_gemm)
                ref = _w8a8_from_kernel_quant(x, q, s, rb, b, block_k)
            else:
                ref = reference.block_fp8_linear(xin, q, s, rb, b, block_k=block_k, **kw)
            assert outs[name].shape == (m, n) and not outs[name].isnan().any()
            assert rel_err(outs[name], ref) < 1e-2, (n, k, m, name, rel_err(outs[name], ref))
        kernels.CONFIG["gemv_m_max"] = 0
        mma = kernels.block_fp8_linear(x, q, s, rb, b, block_k=block_k)
        mma_pre = kernels.block_fp8_linear(xq, q, s, rb, b, block_k=block_k, x_scale=xs)
        mma_w8a8 = kernels.block_fp8_linear(x, q, s, rb, b, block_k=block_k, quantize_activation=True)
    # the small-M kernel's swap-AB form rounds each dequantised weight to bf16 (the GEMV and its row form
    # keep exact products) and all round their outputs to bf16; the CPU interpreter truncates instead of
    # rounding, which doubles both errors (an unseeded run hit 5.0e-3)
    assert rel_err(outs["w8a16"], mma) < 1e-2, rel_err(outs["w8a16"], mma)
    assert rel_err(outs["pre"], mma_pre) < 2e-3, rel_err(outs["pre"], mma_pre)
    assert rel_err(outs["w8a8"], mma_w8a8) < 2e-3, rel_err(outs["w8a8"], mma_w8a8)


def run_small(device: str) -> None:
    # the interpreter truncates fp32->bf16 and mis-rounds some fp32->e4m3 near powers of two,
    # hence the looser bounds here than on the GPU (an indexing bug gives errors near 1)
    cases = [(1, 200, 300, "plain"), (3, 256, 384, "shards"), (20, 130, 256, "perm"), (2, 200, 384, "none")]
    cases += [(20, 260, 256, "none")]
    for m, n, k, layout in cases:
        check_gemm(device, m, n, k, layout, bias=m == 3, tol_w8a16=1e-2, tol_w8a8=1e-2, own_quant=True)
    check_quant(device, 3, 300, max_mismatch=0.05)
    check_split_k(device, 2, 200, 1024)
    check_split_k(device, 3, 130, 1024, "none")
    check_tma(device, 20, 200, 256)
    from deltaserve.ops.fp8 import kernels

    with kernels.config_restored():
        kernels.CONFIG["dequant_m_min"] = 8  # the large-M W8A16 path (bf16 weight copy + matmul)
        check_gemm(device, 9, 200, 300, "perm", bias=True, tol_w8a16=1e-2, tol_w8a8=1e-2, own_quant=True)
    check_gemv(device, 201, 300)
    check_gemv(device, 130, 1024, config=(8, 256, 4, 2))
    check_gemv(device, 200, 384, layout="perm")
    check_gemv(device, 256, 256, layout="shards", config=(4, 128, 2, 1))
    check_gemv(device, 64, 520, block_k=256, config=(2, 256, 1, 1))
    check_gemv(device, 201, 300, m=2)
    check_gemv(device, 200, 384, layout="perm", m=2, config=(4, 128, 2, 1))
    check_gemv(device, 64, 520, block_k=256, config=(2, 256, 1, 1), m=2)
    check_prequantized(device, 3, 200, 300, "shards", tol=1e-2)
    check_prequantized(device, 20, 130, 256, "perm", out_dtype=torch.float32)
    check_small_forms(device, 3, 200, 300, "plain")
    check_small_forms(device, 16, 192, 640, "perm")
    check_small_forms(device, 5, 130, 256, "none", dtype=torch.float16)
    check_extreme_rows(device)


def test_gemv_config_tiers_by_output_width():
    from deltaserve.ops.fp8 import kernels

    with kernels.config_restored():
        kernels.CONFIG["gemv"] = ((8192, (4, 2048, 4, 3)), (4096, (4, 2048, 8, 3)), (0, (2, 2048, 8, 3)))
        picks = [kernels.gemv_config(n) for n in (24576, 8192, 8191, 4096, 2048, 1)]
        assert picks == [(4, 2048, 4, 3)] * 2 + [(4, 2048, 8, 3)] * 2 + [(2, 2048, 8, 3)] * 2
        kernels.CONFIG["gemv"] = ((100, (1, 8, 1, 1)),)  # below every tier: the last tier's config
        assert kernels.gemv_config(5) == (1, 8, 1, 1)
        kernels.CONFIG["gemv"] = None
        assert kernels.gemv_config(4096) is None
        # more rows read the _rows tiers, up to gemv_m_max rows; a None tier is the small-M MMA kernel
        kernels.CONFIG.update(gemv_m_max=2, gemv_rows_w8a8=((8192, None), (0, (2, 512, 2, 3))))
        assert kernels.gemv_config(4096, "gemv_w8a8", m=2) == (2, 512, 2, 3)
        assert kernels.gemv_config(8192, "gemv_w8a8", m=2) is None
        assert kernels.gemv_config(4096, "gemv_w8a8", m=3) is None
        kernels.CONFIG["gemv_m_max"] = 16  # the kernel keeps one accumulator per row, two at most
        assert kernels.gemv_config(4096, "gemv_w8a8", m=3) is None
        w = torch.zeros(8, 8, dtype=kernels.FP8_DTYPE)
        with pytest.raises(ValueError, match="1 to 2 rows"):
            kernels.gemv.gemv(torch.zeros(3, 8), None, w, torch.ones(1, 1), None, None, torch.empty(3, 8),
                              mode=0, block_k=128, config=(2, 8, 1, 1), plain_bn=128)  # fmt: skip
        assert not kernels.gemv.supports(0, 128, None)


def test_config_restored_puts_every_key_back_even_on_error():
    from deltaserve.ops.fp8 import kernels

    before = dict(kernels.CONFIG)
    with pytest.raises(RuntimeError), kernels.config_restored() as saved:
        assert saved == before and saved is not kernels.CONFIG
        kernels.CONFIG["small"] = None
        kernels.CONFIG["not_a_key"] = 1
        raise RuntimeError
    assert kernels.CONFIG == before


def test_prequantized_reference_equals_w8a8():
    from deltaserve.ops.fp8 import block_fp8_linear, per_token_group_quant_fp8

    q, s, rb = make_weight(200, 384, "perm", "cpu")
    x = torch.randn(5, 384).to(torch.bfloat16)
    b = torch.randn(200).to(torch.bfloat16)
    xq, xs = per_token_group_quant_fp8(x, 128)
    out = block_fp8_linear(xq, q, s, rb, b, x_scale=xs)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, block_fp8_linear(x, q, s, rb, b, quantize_activation=True))
    out32 = block_fp8_linear(xq, q, s, rb, b, x_scale=xs, out_dtype=torch.float32)
    assert out32.dtype == torch.float32 and torch.equal(out32.to(torch.bfloat16), out)


def test_prequantized_rejects_bad_args():
    from deltaserve.ops.fp8 import block_fp8_linear, per_token_group_quant_fp8

    q, s, rb = make_weight(64, 256, "plain", "cpu")
    x = torch.randn(2, 256)
    xq, xs = per_token_group_quant_fp8(x)
    with pytest.raises(ValueError, match="quantize_activation"):
        block_fp8_linear(xq, q, s, rb, x_scale=xs, quantize_activation=True)
    with pytest.raises(ValueError, match="x_scale"):
        block_fp8_linear(xq, q, s, rb, x_scale=xs[:, :1])
    with pytest.raises(ValueError, match="x_scale"):
        block_fp8_linear(xq, q, s, rb, x_scale=xs.double())
    with pytest.raises(ValueError, match="x must be"):
        block_fp8_linear(x, q, s, rb, x_scale=xs)
    with pytest.raises(ValueError, match="out_dtype"):
        block_fp8_linear(x, q, s, rb, out_dtype=torch.float32)


def test_reference_linear_rejects_bad_args_naming_them():
    """The CPU path checks what the GPU path checks (one ValueError naming the operand, not a torch
    shape error from inside the product)."""
    from deltaserve.ops.fp8 import block_fp8_linear, per_token_group_quant_fp8

    q, s, rb = make_weight(64, 256, "plain", "cpu")
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"^x must be \[\.\.\., K=256\]"):
        block_fp8_linear(x[:, :255], q, s, rb)
    with pytest.raises(ValueError, match="^w_q must be"):
        block_fp8_linear(x, q.to(torch.bfloat16), s, rb)
    with pytest.raises(ValueError, match="^row_block entries"):
        block_fp8_linear(x, q, s, torch.full_like(rb, s.shape[0]))
    with pytest.raises(ValueError, match="^bias must be"):
        block_fp8_linear(x, q, s, rb, torch.zeros(65, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="^x must be bfloat16"):
        block_fp8_linear(torch.ones(2, 256, dtype=torch.int64), q, s, rb)
    with pytest.raises(ValueError, match="^group must be"):
        per_token_group_quant_fp8(x, 0)


def test_triton_interpret_cpu():
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 3, 16, 17, 257, 2048])
@pytest.mark.parametrize(
    "n,k,layout",
    [
        (2048, 2048, "plain"),
        (12288, 2048, "shards"),
        (200, 300, "plain"),
        (640, 4096, "perm"),
        (1024, 512, "shards"),
        (2048, 4096, "none"),
        (1000, 512, "none"),
        (200, 300, "none"),
    ],
)
def test_block_fp8_linear_gpu(m, n, k, layout):
    check_gemm("cuda", m, n, k, layout, bias=(m % 2 == 1), tol_w8a16=5e-3, tol_w8a8=1e-2)


@pytest.mark.gpu
def test_block_fp8_linear_fp16_gpu():
    check_gemm("cuda", 5, 384, 256, "plain", dtype=torch.float16, tol_w8a16=5e-3, tol_w8a8=1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "m,n,k,layout",
    [(3, 2048, 4096, "none"), (16, 12288, 2048, "none"), (2, 12288, 2048, "shards"), (9, 640, 4096, "perm"),
     (16, 1000, 4100, "plain"), (4, 200, 300, "none")],
)  # fmt: skip
def test_small_forms_gpu(m, n, k, layout):
    check_small_forms("cuda", m, n, k, layout, tol=5e-3)


@pytest.mark.gpu
def test_small_forms_fp16_gpu():
    check_small_forms("cuda", 7, 2048, 2048, "plain", dtype=torch.float16, tol=5e-3)


@pytest.mark.gpu
def test_small_rows_form_extreme_rows_gpu():
    check_extreme_rows("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["plain", "none"])
def test_split_k_gpu(layout):
    check_split_k("cuda", 4, 2048, 4096, layout)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "n,k,layout",
    [(2048, 4096, "none"), (12288, 2048, "none"), (201, 300, "none"), (1000, 4100, "none"), (130, 8, "none"),
     (12288, 2048, "perm"), (12288, 2048, "shards"), (640, 4096, "plain"), (1000, 512, "perm")],
)  # fmt: skip
def test_gemv_gpu(n, k, layout):
    check_gemv("cuda", n, k, layout=layout)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "n,k,layout", [(2048, 4096, "none"), (12288, 2048, "shards"), (1000, 4100, "none"), (640, 4096, "perm")]
)
def test_gemv_two_rows_gpu(n, k, layout):
    """Two rows on shapes the dispatch gives the small-M MMA kernel too (the GEMV is right at any N)."""
    check_gemv("cuda", n, k, layout=layout, m=2, config=(2, 1024, 4, 3))


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(2048, 4096), (2048, 6144), (201, 300)])
def test_gemv_two_rows_default_tiers_gpu(n, k):
    from deltaserve.ops.fp8 import kernels

    assert kernels.gemv_config(n, m=2) is not None  # the dispatch takes the GEMV here
    check_gemv("cuda", n, k, m=2)


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [(1, 512, 4, 3), (8, 512, 8, 2), (2, 2048, 8, 3), (128, 128, 4, 1)])
def test_gemv_configs_gpu(cfg):
    check_gemv("cuda", 1000, 4100, config=cfg)


@pytest.mark.gpu
@pytest.mark.parametrize("m,n,k", [(300, 1000, 512), (2048, 12288, 2048), (513, 2048, 4096)])
def test_tma_gpu(m, n, k):
    check_tma("cuda", m, n, k)


@pytest.mark.gpu
@pytest.mark.parametrize("m,k", [(1, 2048), (257, 4096), (3, 300), (64, 128)])
def test_group_quant_gpu(m, k):
    check_quant("cuda", m, k)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 3, 16, 17, 257, 2048])
@pytest.mark.parametrize(
    "n,k,layout", [(2048, 2048, "plain"), (12288, 2048, "shards"), (640, 4096, "perm"), (12288, 2048, "none")]
)
def test_block_fp8_linear_prequantized_gpu(m, n, k, layout):
    check_prequantized("cuda", m, n, k, layout)


@pytest.mark.gpu
def test_block_fp8_linear_prequantized_fp32_out_gpu():
    check_prequantized("cuda", 33, 1024, 2048, "plain", out_dtype=torch.float32)


@pytest.mark.gpu
def test_block_fp8_linear_prequantized_rejects_strided_scale_gpu():
    from deltaserve.ops.fp8 import block_fp8_linear, per_token_group_quant_fp8

    q, s, rb = make_weight(256, 256, "plain", "cuda")
    xq, xs = per_token_group_quant_fp8(torch.randn(4, 256, device="cuda", dtype=torch.bfloat16))
    xs_t = xs.t().contiguous().t()  # same values, column-major
    with pytest.raises(ValueError, match="x_scale"):
        block_fp8_linear(xq, q, s, rb, x_scale=xs_t)


@pytest.mark.gpu
def test_w8a8_vs_dequantised_bf16_gpu():
    """W8A8 against the dequantised-weight bf16-activation product: the activation-quant error alone."""
    from deltaserve.ops.fp8 import block_fp8_linear, reference

    q, s, rb = make_weight(2048, 2048, "plain", "cuda")
    x = torch.randn(64, 2048, device="cuda", dtype=torch.bfloat16)
    out = block_fp8_linear(x, q, s, rb, quantize_activation=True)
    ref = reference.block_fp8_linear(x, q, s, rb)  # W8A16, fp32
    assert rel_err(out, ref) < 4e-2  # e4m3 activations: about 2.5 % on Gaussian data


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16])
def test_block_fp8_linear_cuda_graph(m):
    from deltaserve.ops.fp8 import block_fp8_linear, reference

    q, s, rb = make_weight(1024, 2048, "plain", "cuda")
    x = torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16)
    for qa in (False, True):
        block_fp8_linear(x, q, s, rb, quantize_activation=qa)  # compile outside the capture
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = block_fp8_linear(x, q, s, rb, quantize_activation=qa)
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.cuda.synchronize()
        ref = reference.block_fp8_linear(x, q, s, rb, quantize_activation=qa)
        assert rel_err(out, ref) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("m", [3, 16])
@pytest.mark.parametrize("qa", [False, True])
@pytest.mark.parametrize("tile", [None, (True, 64, 4, 3, 264, 2, 1), (False, 128, 4, 3, 264, 1, 2)])
def test_block_fp8_linear_dependent_chain_cuda_graph(m, qa, tile, monkeypatch):
    """Four split-K small-M GEMMs, each reading the one before, in one CUDA graph, replayed with fresh
    inputs: the shared tile counters reset between launches and each GEMM reads its predecessor's output
    (the check any PDL variant of the kernel must pass, ops/pdl.py). ``tile``: the default tiers, or one
    forced for every N (both kernel forms, both PDL modes, L2 prefetch before the wait)."""
    from deltaserve.ops.fp8 import block_fp8_linear, kernels, reference

    if tile is not None:
        tiers = ((0, kernels.SmallTile(*tile)),)
        monkeypatch.setitem(kernels.CONFIG, "small", tiers)
        monkeypatch.setitem(kernels.CONFIG, "small_w8a8", tiers)

    weights = [make_weight(2048, 2048, "plain", "cuda", seed=i) for i in range(4)]
    x = torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16)

    def chain() -> list[torch.Tensor]:
        outs, h = [], x
        for q, s, _ in weights:
            h = block_fp8_linear(h, q, s, None, quantize_activation=qa)
            outs.append(h)
        return outs

    chain()  # compile outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        outs = chain()
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.cuda.synchronize()
        h = x
        for (q, s, _), out in zip(weights, outs, strict=True):
            assert rel_err(out, reference.block_fp8_linear(h, q, s, None, quantize_activation=qa)) < 1e-2
            h = out


@pytest.mark.gpu
def test_block_fp8_linear_rejects_bad_args_gpu():
    from deltaserve.ops.fp8 import block_fp8_linear

    q, s, rb = make_weight(256, 256, "plain", "cuda")
    x = torch.randn(2, 256, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="row_block"):
        block_fp8_linear(x, q, s, rb[:10])
    with pytest.raises(ValueError, match="scale_inv"):
        block_fp8_linear(x, q, s[:, :1], rb)
    with pytest.raises(ValueError, match="w_q"):
        block_fp8_linear(torch.randn(2, 128, device="cuda", dtype=torch.bfloat16), q, s, rb)


if __name__ == "__main__":
    run_small("cpu")
    print("ok")
