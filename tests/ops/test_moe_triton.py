"""Triton fused MoE vs the reference: GPU tests (``-m gpu``) and a tiny TRITON_INTERPRET=1 CPU run."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest
import torch

QWEN3_NEXT = dict(e=512, h=2048, i=512, k=10, i_sh=512)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def make_moe(e, h, i, i_sh, device, dtype=torch.bfloat16, fp8=False, seed=0):
    """Random experts (+ shared expert) scaled like a trained layer; FP8 = block-quantised copies."""
    from deltaserve.ops.fp8.reference import quantize_block_fp8
    from deltaserve.ops.moe import ExpertWeights, SharedExpertWeights

    torch.manual_seed(seed)
    w13 = torch.randn(e, 2 * i, h, device=device, dtype=dtype) / h**0.5
    w2 = torch.randn(e, h, i, device=device, dtype=dtype) / i**0.5
    s13 = torch.randn(2 * i_sh, h, device=device, dtype=dtype) / h**0.5
    s2 = torch.randn(h, i_sh, device=device, dtype=dtype) / i_sh**0.5
    gate = torch.randn(1, h, device=device, dtype=dtype) / h**0.5
    if not fp8:
        return ExpertWeights(w13, w2), SharedExpertWeights(s13, s2, gate)
    # gate and up are separate checkpoint tensors: each gets its own scale rows (shard offsets)
    gb = -(-i // 128)
    qg, sg = quantize_block_fp8(w13[:, :i])
    qu, su = quantize_block_fp8(w13[:, i:])
    q2, sc2 = quantize_block_fp8(w2)
    rb13 = torch.cat([torch.arange(i) // 128, gb + torch.arange(i) // 128]).to(device)
    rb2 = (torch.arange(h) // 128).to(device)
    ex = ExpertWeights(torch.cat([qg, qu], 1), q2, torch.cat([sg, su], 1), sc2, rb13, rb2, 128)
    gbs = -(-i_sh // 128)
    qsg, ssg = quantize_block_fp8(s13[:i_sh])
    qsu, ssu = quantize_block_fp8(s13[i_sh:])
    qs2, sss2 = quantize_block_fp8(s2)
    rbs13 = torch.cat([torch.arange(i_sh) // 128, gbs + torch.arange(i_sh) // 128]).to(device)
    sh = SharedExpertWeights(
        torch.cat([qsg, qsu]),
        qs2,
        gate,
        torch.cat([ssg, ssu]),
        sss2,
        rbs13,
        (torch.arange(h) // 128).to(device),
    )
    return ex, sh


def check_route(device, t, e, k, renorm):
    from deltaserve.ops.moe import kernels, reference

    logits = torch.randn(t, e, device=device) * 2
    w, ids = kernels.route_topk(logits, k, renorm)
    rw, rids = reference.route_topk(logits, k, renorm)
    assert ids.dtype == torch.int64 and w.dtype == torch.float32 and ids.shape == (t, k)
    # ids must agree except where two probabilities are within rounding of each other
    probs = torch.softmax(logits.float(), -1)
    kth = torch.topk(probs, min(k + 1, e), -1).values
    near_tie = (kth[:, :-1] - kth[:, 1:]).abs().min(-1).values < 1e-6 if k < e else torch.zeros(t, dtype=bool)
    same = (ids == rids).all(-1)
    assert (same | near_tie.to(device)).all()
    torch.testing.assert_close(w[same], rw[same], rtol=1e-5, atol=1e-6)


def check_route_ties(device):
    """Equal probabilities go to the lowest expert ids, on both routing paths (as in the reference)."""
    from deltaserve.ops.moe import kernels

    logits = torch.zeros(3, 9, device=device)
    logits[1, 4:] = 1.0  # five-way tie on the top
    w, ids = kernels.route_topk(logits, 3, False)
    assert ids.tolist() == [[0, 1, 2], [4, 5, 6], [0, 1, 2]]
    torch.testing.assert_close(w[0], torch.full((3,), 1 / 9, device=device))


def check_experts(device, t, e, h, i, k, tol, unrouted=False):
    from deltaserve.ops.moe import kernels, reference

    ex, _ = make_moe(e, h, i, 16, device, seed=t)
    x = torch.randn(t, h, device=device, dtype=torch.bfloat16)
    w, ids = reference.route_topk(torch.randn(t, e, device=device), k, True)
    ref_ids = ids
    if unrouted:  # padding tokens: id -1 contributes nothing on the GPU path
        ids = ids.clone()
        ids[::2, :] = -1
    out = kernels.fused_experts(x, ex.w13, ex.w2, w, ids)
    ref = reference.fused_experts(x.float(), ex.w13.float(), ex.w2.float(), w, ref_ids)  # [T, H] fp32
    if unrouted:
        ref[::2] = 0
    assert out.dtype == x.dtype and not out.isnan().any()
    err = rel_err(out, ref.to(x.dtype))
    assert err < tol, err
    return err


def check_moe(device, t, e, h, i, k, i_sh, tol, fp8=False, renorm=True, shared=True):
    from deltaserve.ops.moe import kernels, reference

    ex, sh = make_moe(e, h, i, i_sh, device, fp8=fp8, seed=t + 1)
    x = torch.randn(t, h, device=device, dtype=torch.bfloat16)
    logits = torch.randn(t, e, device=device)
    sh = sh if shared else None
    out = kernels.fused_moe(x, logits, k, renorm, ex, sh)
    ref = reference.fused_moe(x, logits, k, renorm, ex, sh)  # FP8: from the dequantised weights
    assert out.shape == x.shape and out.dtype == x.dtype and not out.isnan().any()
    err = rel_err(out, ref)
    assert err < tol, err
    return err


def run_small(device: str) -> None:
    # interpreter: see test_fp8_triton.run_small for why the bounds are looser than on the GPU
    check_route(device, 5, 12, 3, True)
    check_route(device, 2, 7, 7, False)
    check_route_ties(device)
    check_experts(device, 6, 8, 64, 32, 3, 5e-3)
    check_experts(device, 4, 8, 64, 32, 2, 5e-3, unrouted=True)
    check_experts(device, 150, 2, 64, 32, 2, 5e-3)  # many rows per expert: the prefill config
    check_moe(device, 5, 8, 64, 32, 3, 32, 5e-3)  # 20 pairs: the one-program decode set-up
    check_moe(device, 20, 8, 64, 32, 3, 32, 5e-3)  # 80 pairs: route + histogram alignment
    check_moe(device, 3, 8, 64, 32, 3, 48, 5e-3, renorm=False)  # shared of another width
    check_moe(device, 4, 6, 256, 128, 2, 128, 1e-2, fp8=True)
    with swap_up():
        check_experts(device, 6, 8, 64, 32, 3, 5e-3)
        check_experts(device, 150, 2, 64, 32, 2, 5e-3)
        check_moe(device, 5, 8, 64, 32, 3, 32, 5e-3)
        check_moe(device, 4, 6, 256, 128, 2, 128, 1e-2, fp8=True)


@contextlib.contextmanager
def swap_up(on: bool = True):
    """Forces the gate/up GEMM of every row-block size and both weight kinds to swap-AB (``on``) or to
    the plain kernel, each at its bucket's ``CONFIGS`` tile."""
    from deltaserve.ops.moe import kernels

    with kernels.configs_restored() as configs:
        for rows in configs.values():
            rows[:] = [(max_avg, bm, (*up[:4], on), down) for max_avg, bm, up, down in rows]
        yield


def test_configs_restored_after_overrides_and_errors():
    from deltaserve.ops.moe import kernels

    before = {kind: list(rows) for kind, rows in kernels.CONFIGS.items()}
    tables = dict(kernels.CONFIGS)  # the lists themselves: restored in place, not rebound
    with pytest.raises(RuntimeError), swap_up(True):
        assert all(row[2][4] for rows in kernels.CONFIGS.values() for row in rows)
        kernels.CONFIGS["bf16"][:] = []
        raise RuntimeError("a failing sweep step")
    assert kernels.CONFIGS == before and all(kernels.CONFIGS[kind] is tables[kind] for kind in tables)


def test_triton_interpret_cpu():
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("t", [1, 3, 257, 4096])
@pytest.mark.parametrize("e,k,renorm", [(512, 10, True), (8, 3, False), (64, 64, True)])
def test_route_gpu(t, e, k, renorm):
    check_route("cuda", t, e, k, renorm)


@pytest.mark.gpu
@pytest.mark.parametrize("t", [2, 64, 1024, 4096])
@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("on", [False, True])
def test_fused_moe_swap_up_gpu(t, fp8, on):
    """Both tile orders of the gate/up GEMM, whatever ``CONFIGS`` ships, at Qwen3-Next shapes (the
    T values reach every ``CONFIGS`` bucket)."""
    q = QWEN3_NEXT
    with swap_up(on):
        check_moe("cuda", t, q["e"], q["h"], q["i"], q["k"], q["i_sh"], 2e-2 if fp8 else 2e-3, fp8=fp8)


@pytest.mark.gpu
@pytest.mark.parametrize("t", [1, 3, 257])
def test_fused_experts_qwen3_next_gpu(t):
    q = QWEN3_NEXT
    check_experts("cuda", t, q["e"], q["h"], q["i"], q["k"], 2e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("t", [1, 3, 64, 1000])
def test_fused_experts_unrouted_tokens_gpu(t):
    check_experts("cuda", t, 16, 256, 96, 4, 2e-3, unrouted=True)


@pytest.mark.gpu
@pytest.mark.parametrize("t", [1, 3, 257, 2048])
@pytest.mark.parametrize("fp8", [False, True])
def test_fused_moe_qwen3_next_gpu(t, fp8):
    q = QWEN3_NEXT
    check_moe("cuda", t, q["e"], q["h"], q["i"], q["k"], q["i_sh"], 2e-2 if fp8 else 2e-3, fp8=fp8)


@pytest.mark.gpu
@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("i_sh,shared", [(96, True), (160, True), (96, False)])
def test_fused_moe_odd_shapes_gpu(fp8, i_sh, shared):
    # I not a multiple of the tiles, shared expert of another width (unfolded path) or none
    check_moe("cuda", 37, 24, 384, 96, 5, i_sh, 2e-2 if fp8 else 2e-3, fp8=fp8, shared=shared)


@pytest.mark.gpu
@pytest.mark.parametrize("t", [1, 16])
@pytest.mark.parametrize("fp8", [False, True])
def test_fused_moe_cuda_graph(t, fp8):
    from deltaserve.ops.moe import fused_moe, reference

    q = QWEN3_NEXT
    ex, sh = make_moe(64, q["h"], q["i"], q["i_sh"], "cuda", fp8=fp8)
    x = torch.randn(t, q["h"], device="cuda", dtype=torch.bfloat16)
    logits = torch.randn(t, 64, device="cuda")
    fused_moe(x, logits, q["k"], True, ex, sh)  # compile outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fused_moe(x, logits, q["k"], True, ex, sh)
    for _ in range(2):  # new inputs route to other experts: the graph must follow
        x.copy_(torch.randn_like(x))
        logits.copy_(torch.randn_like(logits))
        g.replay()
        torch.cuda.synchronize()
        assert rel_err(out, reference.fused_moe(x, logits, q["k"], True, ex, sh)) < (2e-2 if fp8 else 2e-3)


@pytest.mark.gpu
def test_layer_sparse_moe_block_cuda_matches_cpu():
    """The layer's CUDA path (fused_moe) against its unchanged CPU path on the same weights."""
    from deltaserve.layers.moe import SparseMoeBlock

    torch.manual_seed(0)
    blk = SparseMoeBlock(256, 16, 4, 128, 128, True, dtype=torch.bfloat16)
    with torch.no_grad():
        for p in blk.parameters():
            p.copy_(torch.randn_like(p) * 0.06)
    x = torch.randn(9, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        ref = blk.float()(x.float())
        out = blk.to("cuda", torch.bfloat16)(x.cuda())
    assert rel_err(out.cpu(), ref) < 1e-2


if __name__ == "__main__":
    run_small("cpu")
    print("ok")
