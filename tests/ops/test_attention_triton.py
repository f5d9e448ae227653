"""Triton paged attention / KV write vs the reference: GPU tests and a tiny TRITON_INTERPRET CPU run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from deltaserve.ops.attention import reference
from deltaserve.ops.attention.testing import PagedCase, make_paged_case

ROOT = Path(__file__).resolve().parents[2]


def _ref(case: PagedCase, **kw) -> torch.Tensor:
    return reference.paged_attention(
        case.q,
        case.k_cache,
        case.v_cache,
        block_tables=case.block_tables,
        cu_seqlens_q=case.cu_seqlens_q,
        seq_lens=case.seq_lens,
        scale=case.scale,
        gate=case.gate,
        **kw,
    )


_INTERPRET_SCRIPT = textwrap.dedent(
    """
    import torch
    from deltaserve.ops.attention import kernels, reference
    from deltaserve.ops.attention.testing import make_paged_case

    cases = [
        ([1, 0, 2, 1], [1, 5, 37, 70], 16, kernels.AttnConfig(2, 16, 3, 4, 1)),  # split-K decode
        ([20, 3], [20, 40], 1, kernels.AttnConfig(4, 16, 1, 4, 1)),  # prefill tiles, prefix, page 1
    ]
    for q_lens, seq_lens, bs, cfg in cases:
        c = make_paged_case(q_lens, seq_lens, hq=4, hkv=2, d=16, block_size=bs, pad_rows=1,
                            interleaved_kv=True)
        kw = dict(block_tables=c.block_tables, cu_seqlens_q=c.cu_seqlens_q, seq_lens=c.seq_lens,
                  scale=c.scale, gate=c.gate)
        out = torch.full_like(c.q, float("nan"))
        kernels.paged_attention(c.q, c.k_cache, c.v_cache, config=cfg, out=out, **kw)
        want = reference.paged_attention(c.q, c.k_cache, c.v_cache, **kw)
        n = sum(q_lens)
        torch.testing.assert_close(out[:n], want[:n], rtol=1e-5, atol=1e-5)
        assert torch.isnan(out[n:]).all(), "padding rows must stay untouched"
    k = torch.randn(5, 2, 16)
    v = torch.randn(5, 2, 16)
    pool = torch.randn(4, 4, 2, 2, 16)
    want = pool.clone()
    slots = torch.tensor([3, -1, 15, 0, 9])
    kernels.write_kv_cache(k, v, pool[:, :, 0], pool[:, :, 1], slots)
    reference.write_kv_cache(k, v, want[:, :, 0], want[:, :, 1], slots)
    assert torch.equal(pool, want)
    print("INTERPRET_OK")
    """
)


def test_triton_kernels_under_interpreter() -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _INTERPRET_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "INTERPRET_OK" in proc.stdout, proc.stderr[-4000:]


# ---------------------------------------------------------------- GPU (pytest -m gpu)

# (q_lens, seq_lens): decode incl. length 1 and page edges, spec-verify, chunked prefill after a long
# prefix, empty prefix, q_len 0, varlen mix.
GPU_BATCHES = [
    ([1] * 7, [1, 15, 16, 17, 63, 64, 1000]),
    ([3, 4, 1], [3, 300, 2049]),
    ([0, 130, 1, 77], [10, 130, 65, 1500]),
    ([257], [1000]),
]


def _gpu_case(batch, *, d, hq, hkv, page, dtype=torch.bfloat16, seed=0, **kw) -> PagedCase:
    return make_paged_case(
        *batch,
        hq=hq,
        hkv=hkv,
        d=d,
        block_size=page,
        dtype=dtype,
        device="cuda",
        seed=seed,
        pad_rows=3,
        **kw,
    )


def _check(case: PagedCase, atol: float, **kw) -> None:
    from deltaserve.ops.attention import kernels

    out = torch.full_like(case.q, float("nan"))
    kernels.paged_attention(
        case.q,
        case.k_cache,
        case.v_cache,
        block_tables=case.block_tables,
        cu_seqlens_q=case.cu_seqlens_q,
        seq_lens=case.seq_lens,
        scale=case.scale,
        gate=case.gate,
        out=out,
        **kw,
    )
    n = sum(case.q_lens)
    scales = {k: kw[k] for k in ("k_scale", "v_scale") if k in kw}
    torch.testing.assert_close(out[:n].float(), _ref(case, **scales)[:n].float(), rtol=atol, atol=atol)
    assert torch.isnan(out[n:]).all()


@pytest.mark.gpu
@pytest.mark.parametrize("d,hq,hkv", [(256, 16, 2), (128, 8, 1), (256, 6, 1), (128, 4, 4)])
@pytest.mark.parametrize("page", [1, 16, 64])
@pytest.mark.parametrize("batch", GPU_BATCHES)
def test_paged_attention_gpu(d: int, hq: int, hkv: int, page: int, batch) -> None:
    case = _gpu_case(batch, d=d, hq=hq, hkv=hkv, page=page, interleaved_kv=page == 16)
    _check(case, 2e-2)
    _check(case, 2e-2, max_seqlen_q=max(batch[0]) + 5, max_seqlen_k=max(batch[1]) + 100)


@pytest.mark.gpu
@pytest.mark.parametrize("splits", [1, 2, 7])
@pytest.mark.parametrize("prefill", [False, True])
def test_paged_attention_gpu_forced_configs(splits: int, prefill: bool) -> None:
    from deltaserve.ops.attention.kernels import AttnConfig

    batch = ([1, 2, 1, 0], [700, 33, 1, 9]) if not prefill else ([300, 5], [300, 900])
    case = _gpu_case(batch, d=256, hq=16, hkv=2, page=16, seed=splits)
    for block_n in (16, 32, 64):
        _check(case, 2e-2, config=AttnConfig(2 if not prefill else 8, block_n, splits, 4, 2))


@pytest.mark.gpu
def test_paged_attention_gpu_fp32_and_no_gate() -> None:
    case = _gpu_case(([2, 1, 40], [9, 129, 40]), d=128, hq=8, hkv=2, page=16, dtype=torch.float32, gate=False)
    _check(case, 1e-4)


@pytest.mark.gpu
def test_paged_attention_gpu_default_output_zero_padding() -> None:
    from deltaserve.ops.attention import paged_attention

    case = _gpu_case(([1, 1], [100, 5]), d=256, hq=16, hkv=2, page=64)
    out = paged_attention(
        case.q,
        case.k_cache,
        case.v_cache,
        block_tables=case.block_tables,
        cu_seqlens_q=case.cu_seqlens_q,
        seq_lens=case.seq_lens,
        scale=case.scale,
        gate=case.gate,
    )
    torch.testing.assert_close(out[:2].float(), _ref(case)[:2].float(), rtol=2e-2, atol=2e-2)
    assert torch.all(out[2:] == 0)


@pytest.mark.gpu
def test_paged_decode_cuda_graph_replay() -> None:
    """Capture decode once with fixed bounds; replay after the metadata changes in place."""
    from deltaserve.ops.attention import paged_attention

    case = _gpu_case(([1] * 8, [50, 900, 1, 64, 65, 300, 2000, 17]), d=256, hq=16, hkv=2, page=16)
    kw = dict(
        block_tables=case.block_tables,
        cu_seqlens_q=case.cu_seqlens_q,
        seq_lens=case.seq_lens,
        scale=case.scale,
        gate=case.gate,
        max_seqlen_q=1,
        max_seqlen_k=2048,
    )
    paged_attention(case.q, case.k_cache, case.v_cache, **kw)  # compile outside capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        paged_attention(case.q, case.k_cache, case.v_cache, **kw)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = paged_attention(case.q, case.k_cache, case.v_cache, **kw)
    case.seq_lens.copy_(torch.tensor([49, 700, 1, 63, 2, 300, 1999, 16], device="cuda"))
    case.q.normal_()
    graph.replay()
    torch.testing.assert_close(out[:8].float(), _ref(case)[:8].float(), rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("page", [1, 16])
def test_write_kv_cache_gpu(page: int) -> None:
    from deltaserve.ops.attention import write_kv_cache

    gen = torch.Generator().manual_seed(page)
    pool = torch.randn(40, page, 2, 2, 256, generator=gen).to("cuda", torch.bfloat16)  # [NB, BS, 2, Hkv, D]
    want = pool.clone()
    t = 37
    k = torch.randn(t, 2, 256, generator=gen).to("cuda", torch.bfloat16)
    v = torch.randn(t, 4, 256, generator=gen).to("cuda", torch.bfloat16)[:, 1:3]  # strided source
    slots = torch.randperm(40 * page, generator=gen)[:t].cuda()
    slots[::5] = -1
    write_kv_cache(k, v, pool[:, :, 0], pool[:, :, 1], slots)
    reference.write_kv_cache(k, v, want[:, :, 0], want[:, :, 1], slots)
    assert torch.equal(pool, want)


@pytest.mark.gpu
@pytest.mark.parametrize("page", [1, 16])
def test_paged_attention_gpu_fp8_cache(page: int) -> None:
    fp8 = torch.float8_e4m3fn
    case = _gpu_case(([1, 1, 3, 70], [1, 900, 64, 300]), d=256, hq=16, hkv=2, page=page, cache_dtype=fp8)
    _check(case, 2e-2, k_scale=0.3, v_scale=1.7)


@pytest.mark.gpu
def test_write_kv_cache_gpu_fp8() -> None:
    from deltaserve.ops.attention import write_kv_cache

    fp8 = torch.float8_e4m3fn
    gen = torch.Generator().manual_seed(9)
    k = (torch.randn(50, 2, 128, generator=gen) * 4).to("cuda", torch.bfloat16)
    v = torch.randn(50, 2, 128, generator=gen).to("cuda", torch.bfloat16)
    kc, vc = (
        torch.zeros(8, 16, 2, 128, dtype=fp8, device="cuda"),
        torch.zeros(8, 16, 2, 128, dtype=fp8, device="cuda"),
    )
    kr, vr = kc.clone(), vc.clone()
    slots = torch.randperm(128, generator=gen)[:50].cuda()
    write_kv_cache(k, v, kc, vc, slots, k_scale=0.05, v_scale=0.5)
    reference.write_kv_cache(k, v, kr, vr, slots, k_scale=0.05, v_scale=0.5)
    for got, want in ((kc, kr), (vc, vr)):
        torch.testing.assert_close(got.float(), want.float(), rtol=0.13, atol=1e-3)  # within one fp8 step
        assert (got.view(torch.uint8) != want.view(torch.uint8)).float().mean() < 1e-3


def test_pick_config_invariants() -> None:
    """Decode gets one q tile and split-K when the grid is small; prefill tiles are 128 rows; every
    tile has at least 16 rows (the minimum tl.dot M)."""
    kernels = pytest.importorskip("deltaserve.ops.attention.kernels")
    for group in (1, 6, 8, 16):
        g_pad = 1 << (group - 1).bit_length()
        for max_q in (1, 3, 4, 16, 4096):
            for batch, max_k in ((1, 100), (1, 8192), (64, 8192), (512, 8192)):
                cfg = kernels.pick_config(
                    batch=batch,
                    hkv=2,
                    group=group,
                    d=256,
                    max_seqlen_q=max_q,
                    max_seqlen_k=max_k,
                    num_sms=132,
                )
                assert cfg.block_q * g_pad >= 16 and cfg.num_splits >= 1
                if max_q * g_pad <= 64:
                    assert cfg.block_q >= max_q
                else:
                    assert cfg.block_q * g_pad == max(128, g_pad)
                programs = batch * -(-max_q // cfg.block_q) * 2
                if programs >= 2 * 132 or max_k < 512:
                    assert cfg.num_splits == 1
    cfg = kernels.pick_config(batch=64, hkv=2, group=8, d=256, max_seqlen_q=1, max_seqlen_k=8192, num_sms=132)
    assert cfg.num_splits > 1
