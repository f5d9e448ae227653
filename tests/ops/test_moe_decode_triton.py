"""Decode-sized MoE launches folded together: the router GEMM into the set-up launch
(``fused_moe(..., router_weight=W)``) and the final fp32 -> bf16 cast into the down GEMM.

Against the logits path (``fused_moe(x, x Wᵀ, ...)``): same logits, routing, alignment and output;
fused cast against the separate cast. A tiny TRITON_INTERPRET=1 CPU run and GPU tests (``-m gpu``)
at Qwen3-Next widths.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from test_moe_triton import QWEN3_NEXT, make_moe, rel_err


def _boundary_tied(logits: torch.Tensor, k: int) -> torch.Tensor:
    """``[T]`` bool: the k-th and (k+1)-th largest logits are equal (torch.topk, the reference's
    router, breaks such ties its own way; the kernels take the lowest expert id)."""
    if k >= logits.shape[1]:
        return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    srt = logits.float().sort(-1, descending=True).values  # [T, E]
    return srt[:, k - 1] == srt[:, k]


def _setup_both(x, rw, top_k, renorm, gate_weight, e1, bm=16):
    """The fused router set-up and ``_setup_small`` fed with its logits: both outputs, as dicts."""
    from deltaserve.ops.moe import kernels

    t, h = x.shape
    kt = top_k + (gate_weight is not None)
    outs = []
    for fused in (True, False):
        w = torch.full((t, kt), -7.0, device=x.device)  # garbage: every slot must be written
        ids = torch.full((t, kt), -7, dtype=torch.int64, device=x.device)
        out32 = torch.full((t, h), 5.0, device=x.device)
        if fused:
            route = kernels._Route(None, top_k, renorm, gate_weight, rw)
            sorted_ids, bexp, nb, logits = kernels._setup_small_router(x, route, ids, w, e1, bm, out32)
        else:
            route = kernels._Route(logits, top_k, renorm, gate_weight)
            sorted_ids, bexp, nb = kernels._setup_small(x, route, ids, w, e1, bm, out32)
        outs.append(dict(w=w, ids=ids, out32=out32, sorted=sorted_ids, bexp=bexp, nb=nb, logits=logits))
    return outs


def check_setup_matches(device, t, e, h, k, renorm=True, shared=True, grid=False, dtype=torch.bfloat16):
    """Fused router set-up == logits set-up, bit for bit; logits == ``reference.router_logits_of``.

    ``grid``: x and W on a 1/8 grid, so every fp32 sum is exact in any order and the logits must
    equal the reference bit for bit (it also makes round-to-nearest-even ties frequent)."""
    from deltaserve.ops.moe import reference

    g = torch.Generator().manual_seed(t * 131 + e)
    if grid:
        x = torch.randint(-24, 25, (t, h), generator=g) / 8
        rw = torch.randint(-24, 25, (e, h), generator=g) / 8
    else:
        x = torch.randn(t, h, generator=g)
        rw = torch.randn(e, h, generator=g) / h**0.5
    rw[e // 2] = rw[1]  # duplicate router rows: exact ties in the logits
    x, rw = x.to(device, dtype), rw.to(device, dtype)
    gate = (torch.randn(1, h, generator=g) / h**0.5).to(device, dtype) if shared else None
    fused, plain = _setup_both(x, rw, k, renorm, gate, e + shared)
    ref_logits = reference.router_logits_of(x, rw)
    if grid:
        assert torch.equal(fused["logits"], ref_logits)
    else:  # one activation-dtype ulp at most, from the order of the fp32 sums
        ulp = torch.finfo(dtype).eps * ref_logits.float().abs().clamp_min(1e-3)
        assert ((fused["logits"].float() - ref_logits.float()).abs() <= ulp).all()
    for name in ("ids", "out32", "sorted", "bexp"):
        assert torch.equal(fused[name], plain[name]), name
    if device == "cpu":
        assert torch.equal(fused["w"], plain["w"])
    else:  # same code in two kernels; a reduction may be laid out (ordered) differently
        torch.testing.assert_close(fused["w"], plain["w"], rtol=1e-6, atol=1e-7)
    assert fused["nb"] == plain["nb"]
    assert (fused["out32"] == 0).all()
    rw_ref, ids_ref = reference.route_topk(fused["logits"], k, renorm)
    same = (fused["ids"][:, :k].sort(-1).values == ids_ref.sort(-1).values).all(-1)
    assert (same | _boundary_tied(fused["logits"], k)).all()
    torch.testing.assert_close(fused["w"][:, :k], rw_ref, rtol=1e-5, atol=1e-6)
    if shared:
        assert (fused["ids"][:, k] == e).all()
        sig = torch.sigmoid(x.float() @ gate.float().T)[:, 0]
        torch.testing.assert_close(fused["w"][:, k], sig, rtol=1e-5, atol=1e-6)
    return fused


def check_ties(device, dtype=torch.bfloat16):
    """All-equal logits (x = 0, and duplicate rows) go to the lowest expert ids."""
    e, h, k = 12, 32, 3
    x = torch.zeros(2, h, device=device, dtype=dtype)
    x[1] = 1.0
    rw = torch.zeros(e, h, device=device, dtype=dtype)
    rw[7] = 1.0 / h  # token 1: expert 7, then the 11-way tie -> 0, 1
    fused, _ = _setup_both(x, rw, k, False, None, e)
    assert fused["ids"].tolist() == [[0, 1, 2], [7, 0, 1]]


def check_moe_router(device, t, e, h, i, k, i_sh, tol, fp8=False, renorm=True, shared=True, reps=1):
    """``fused_moe(router_weight=W)`` vs the logits path fed ``x Wᵀ`` and vs the reference."""
    from deltaserve.ops.moe import kernels, reference

    ex, sh = make_moe(e, h, i, i_sh, device, fp8=fp8, seed=t + 7)
    sh = sh if shared else None
    x = torch.randn(t, h, device=device, dtype=torch.bfloat16)
    rw = (torch.randn(e, h, device=device) / h**0.5).to(torch.bfloat16)
    if t * (k + shared) <= kernels.SMALL_PAIRS:  # folded router GEMM: these logits (checked above)
        logits = reference.router_logits_of(x, rw)  # [T, E]
    else:  # torch's router GEMM (cuBLAS on the GPU may reduce in bf16: other roundings)
        logits = torch.nn.functional.linear(x, rw)
    via_logits = kernels.fused_moe(x, logits, k, renorm, ex, sh)
    ref = reference.fused_moe(x, logits, k, renorm, ex, sh)
    keep = ~_boundary_tied(logits, k)  # [T] tokens the reference routes like the kernels
    for _ in range(reps):  # repeated launches: the arrival counter must be back at 0 each time
        out = kernels.fused_moe(x, None, k, renorm, ex, sh, router_weight=rw)
        assert out.shape == x.shape and out.dtype == x.dtype and not out.isnan().any()
        assert rel_err(out, via_logits) < tol / 4, rel_err(out, via_logits)
        assert keep.any() and rel_err(out[keep], ref[keep]) < tol, rel_err(out[keep], ref[keep])
    assert int(kernels._arrival_counters(x.device)[0]) == 0


def check_combine(device, t, e, h, i, k, unrouted=False):
    """The down GEMM's in-kernel combine + cast vs atomic adds + a separate cast: equal for ``k = 1``,
    else one bf16 ulp apart at most (sums in another order); NaN kept; unrouted pairs (id -1) add
    nothing; bit-identical when repeated; its counters back at 0."""
    from deltaserve.ops.moe import kernels

    ex, _ = make_moe(e, h, i, 16, device, seed=t + 3)
    x = torch.randn(t, h, device=device, dtype=torch.bfloat16)
    w = torch.rand(t, k, device=device)
    ids = torch.stack([torch.randperm(e)[:k] for _ in range(t)]).to(device)  # [T, k]
    w2 = ex.w2.clone()
    w2[int(ids[0, 0]), 1] = float("nan")  # column 1 of its tokens -> NaN through the combine
    nan = torch.zeros(t, h, dtype=torch.bool, device=device)
    nan[:, 1] = (ids == ids[0, 0]).any(-1)
    if unrouted:
        ids[1::2, -1] = -1
    saved = kernels.SMALL_COMBINE
    try:
        kernels.SMALL_COMBINE = True
        fused = kernels.fused_experts(x, ex.w13, w2, w, ids)
        again = kernels.fused_experts(x, ex.w13, w2, w, ids)
        kernels.SMALL_COMBINE = False
        plain = kernels.fused_experts(x, ex.w13, w2, w, ids)
    finally:
        kernels.SMALL_COMBINE = saved
    assert torch.equal(fused.isnan(), nan) and torch.equal(plain.isnan(), nan)
    assert torch.equal(fused[~nan], again[~nan])
    if k == 1:
        assert torch.equal(fused[~nan], plain[~nan])
    else:
        ulp = torch.finfo(torch.bfloat16).eps * plain[~nan].float().abs().clamp_min(1e-6)
        assert ((fused[~nan].float() - plain[~nan].float()).abs() <= ulp).all()
    assert (kernels._arrival_counters(x.device) == 0).all()


def check_down_gemv(device, e, h, i, k, fp8=False, unrouted=False, shared=False):
    """One token: the down GEMV pass (``DOWN_GEMV_MAX_T``) vs the tiled down GEMM + in-kernel combine
    and vs the reference, bit-repeatable. Plain experts: NaN in one expert's row reaches only that
    column and an unrouted pair (id -1) adds nothing. ``shared`` / ``fp8``: through ``fused_moe``
    (the shared expert is one more pair; FP8 block scales)."""
    from deltaserve.ops.moe import kernels, reference

    ex, sh = make_moe(e, h, i, i, device, fp8=fp8, seed=e + h + i)
    x = torch.randn(1, h, device=device, dtype=torch.bfloat16)
    nan_col = None
    if shared or fp8:
        logits = torch.randn(1, e, device=device, dtype=torch.bfloat16)
        sh = sh if shared else None

        def run():
            return kernels.fused_moe(x, logits, k, True, ex, sh)

        ref = reference.fused_moe(x, logits, k, True, ex, sh)
    else:
        w = torch.rand(1, k, device=device)
        ids = torch.randperm(e)[:k][None].to(device)  # [1, k]
        w2 = ex.w2.clone()
        w2[int(ids[0, 0]), 1] = float("nan")
        nan_col = 1
        used = k - 1 if unrouted else k
        if unrouted:
            ids[0, -1] = -1
        ref = reference.fused_experts(x, ex.w13, w2, w[:, :used], ids[:, :used])

        def run():
            return kernels.fused_experts(x, ex.w13, w2, w, ids)

    saved = kernels.DOWN_GEMV_MAX_T
    try:
        kernels.DOWN_GEMV_MAX_T = 1
        gemv, again = run(), run()
        kernels.DOWN_GEMV_MAX_T = 0
        tiled = run()
    finally:
        kernels.DOWN_GEMV_MAX_T = saved
    assert gemv.shape == (1, h) and gemv.dtype == torch.bfloat16
    nan = gemv.isnan()
    assert torch.equal(nan, tiled.isnan()) and torch.equal(nan, ref.isnan())
    assert int(nan.sum()) == (0 if nan_col is None else 1) and (nan_col is None or nan[0, nan_col])
    fin = ~nan
    assert torch.equal(gemv[fin], again[fin])
    assert rel_err(gemv[fin], tiled[fin]) < 4e-3, rel_err(gemv[fin], tiled[fin])
    assert rel_err(gemv[fin], ref[fin]) < 5e-3, rel_err(gemv[fin], ref[fin])


def check_errors(device):
    from deltaserve.ops.moe import kernels, reference

    ex, sh = make_moe(4, 32, 16, 16, device)
    x = torch.randn(2, 32, device=device, dtype=torch.bfloat16)
    rw = torch.randn(4, 32, device=device, dtype=torch.bfloat16)
    for impl in (kernels, reference):
        with pytest.raises(ValueError, match="router_logits"):
            impl.fused_moe(x, None, 2, True, ex, sh)
        with pytest.raises(ValueError, match="router_logits"):
            impl.fused_moe(x, rw @ x.T, 2, True, ex, sh, router_weight=rw)
        with pytest.raises(ValueError, match="router_weight"):
            impl.fused_moe(x, None, 2, True, ex, sh, router_weight=rw[:3])
    with pytest.raises(ValueError, match="router_weight"):
        kernels.fused_moe(x, None, 2, True, ex, sh, router_weight=rw.float())
    assert kernels.fused_moe(x[:0], None, 2, True, ex, sh, router_weight=rw).shape == (0, 32)
    with pytest.raises(ValueError, match="router_weight"):
        kernels.fused_moe(x, None, 2, True, ex, sh, router_weight=rw[:, :16])


def run_small(device: str) -> None:
    from deltaserve.ops.moe import kernels

    kernels.POISON_SCRATCH = True  # an unwritten logit or pair row read anywhere -> NaN -> failure
    check_moe_router(device, 3, 8, 64, 32, 3, 32, 5e-3)  # default: T > 1 computes the logits first
    kernels.ROUTER_FUSED_MAX_T = 64  # every small batch through the router-in-set-up kernel
    for t in (1, 3, 6):
        check_setup_matches(device, t, 12, 80, 3, grid=True)
        check_setup_matches(device, t, 12, 80, 3, renorm=t != 3)
    check_setup_matches(device, 2, 9, 48, 4, shared=False, grid=True)
    check_setup_matches(device, 3, 10, 40, 2, grid=True, dtype=torch.float16)
    check_setup_matches(device, 16, 4, 64, 3, shared=False)  # 48 pairs, 16 tokens in one tile
    check_ties(device)
    check_errors(device)
    check_moe_router(device, 3, 8, 64, 32, 3, 32, 5e-3, reps=3)  # small path, shared folded in
    check_moe_router(device, 5, 8, 64, 32, 3, 32, 5e-3, renorm=False, shared=False)
    check_moe_router(device, 3, 8, 64, 32, 3, 48, 5e-3)  # shared of another width: two passes
    check_moe_router(device, 17, 8, 32, 16, 3, 16, 5e-3)  # 68 pairs: torch router GEMM + routing
    check_combine(device, 6, 8, 136, 32, 3)  # 18 pairs, a partial column tile
    check_combine(device, 5, 8, 64, 32, 1)
    check_combine(device, 4, 8, 64, 32, 3, unrouted=True)
    check_down_gemv(device, 8, 136, 32, 3)  # a partial column tile
    check_down_gemv(device, 8, 64, 48, 3, unrouted=True)  # I not a power of two
    check_down_gemv(device, 8, 64, 32, 2, shared=True)
    check_down_gemv(device, 8, 256, 256, 2, fp8=True, shared=True)  # two 128-wide scale blocks each way
    kernels.DOWN_GEMV_IDS_IN_REGS = False  # ids and weights loaded pair by pair
    check_down_gemv(device, 8, 64, 48, 3, unrouted=True)
    kernels.DOWN_GEMV_IDS_IN_REGS = True
    saved = kernels.UP_GEMV["bf16"]
    kernels.UP_GEMV["bf16"] = (2, 64, 4, 2)  # bf16 experts through the up GEMV: K steps, a partial last one
    try:
        check_down_gemv(device, 8, 136, 48, 3, unrouted=True)
    finally:
        kernels.UP_GEMV["bf16"] = saved


@pytest.fixture
def poisoned():
    """GPU tests: NaN-filled decode scratch buffers (the caching allocator would hand out old data)."""
    from deltaserve.ops.moe import kernels

    saved = kernels.POISON_SCRATCH, kernels.ROUTER_FUSED_MAX_T
    kernels.POISON_SCRATCH, kernels.ROUTER_FUSED_MAX_T = True, 64  # T > 1 through the fused router too
    yield
    kernels.POISON_SCRATCH, kernels.ROUTER_FUSED_MAX_T = saved


def test_router_setup_interpret_cpu():
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def test_reference_router_weight_cpu():
    """The reference's ``router_weight`` path is its logits path on ``router_logits_of``."""
    from deltaserve.ops.moe import fused_moe, reference

    ex, sh = make_moe(6, 32, 16, 24, "cpu", dtype=torch.float32)
    x = torch.randn(4, 32)
    rw = torch.randn(6, 32)
    out = fused_moe(x, None, 2, True, ex, sh, router_weight=rw)
    torch.testing.assert_close(out, fused_moe(x, x @ rw.T, 2, True, ex, sh))
    xb, rwb = x.bfloat16(), rw.bfloat16()
    assert reference.router_logits_of(xb, rwb).dtype == torch.bfloat16
    torch.testing.assert_close(
        reference.router_logits_of(xb, rwb), (xb.float() @ rwb.float().T).bfloat16(), rtol=0, atol=0
    )


@pytest.mark.gpu
@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("t", [1, 3, 5])
@pytest.mark.parametrize("renorm", [True, False])
def test_router_setup_qwen3_next_gpu(t, renorm):
    q = QWEN3_NEXT
    check_setup_matches("cuda", t, q["e"], q["h"], q["k"], renorm=renorm)


@pytest.mark.gpu
@pytest.mark.usefixtures("poisoned")
def test_router_setup_grid_and_ties_gpu():
    check_setup_matches("cuda", 4, 512, 2048, 10, grid=True)
    check_setup_matches("cuda", 6, 64, 256, 8, shared=False, grid=True)
    check_setup_matches("cuda", 3, 33, 200, 5, grid=True, dtype=torch.float16)
    check_ties("cuda")
    check_errors("cuda")


@pytest.mark.gpu
@pytest.mark.usefixtures("poisoned")
def test_router_logits_vs_cublas_gpu():
    """The folded router GEMM against cuBLAS (``F.linear`` in bf16, fp32 reductions): at most 1 ulp,
    rarely (the fp32 sums run in another order)."""
    from deltaserve.ops.moe import kernels

    q = QWEN3_NEXT
    x = torch.randn(5, q["h"], device="cuda", dtype=torch.bfloat16)
    rw = (torch.randn(q["e"], q["h"], device="cuda") / q["h"] ** 0.5).to(torch.bfloat16)
    ids = torch.empty(5, q["k"], dtype=torch.int64, device="cuda")
    w = torch.empty(5, q["k"], device="cuda")
    out32 = torch.empty(5, q["h"], device="cuda")
    route = kernels._Route(None, q["k"], True, None, rw)
    logits = kernels._setup_small_router(x, route, ids, w, q["e"], 16, out32)[3]
    saved = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False  # fp32 sums only
    try:
        cub = torch.nn.functional.linear(x, rw)
    finally:
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = saved
    diff = (logits.float() - cub.float()).abs()
    ulp = torch.finfo(torch.bfloat16).eps * cub.float().abs().clamp_min(1e-3)
    assert (diff <= ulp).all()
    assert (diff > 0).float().mean() < 0.01


@pytest.mark.gpu
@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("t", [1, 3, 5, 257])
@pytest.mark.parametrize("fp8", [False, True])
def test_fused_moe_router_qwen3_next_gpu(t, fp8):
    q = QWEN3_NEXT
    check_moe_router("cuda", t, q["e"], q["h"], q["i"], q["k"], q["i_sh"], 2e-2 if fp8 else 2e-3, fp8, reps=3)


@pytest.mark.gpu
@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("i_sh,shared", [(96, True), (160, True), (96, False)])
def test_fused_moe_router_odd_shapes_gpu(i_sh, shared):
    check_moe_router("cuda", 4, 24, 384, 96, 5, i_sh, 2e-3, shared=shared)


@pytest.mark.gpu
@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("t", [1, 5, 64])
def test_combine_qwen3_next_gpu(t):
    q = QWEN3_NEXT
    check_combine("cuda", t, q["e"], q["h"], q["i"], 1 if t == 64 else q["k"], unrouted=t == 5)


@pytest.mark.gpu
@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("t", [1, 5])
def test_fused_moe_router_cuda_graph(t):
    from deltaserve.ops.moe import fused_moe, reference

    q = QWEN3_NEXT
    ex, sh = make_moe(q["e"], q["h"], q["i"], q["i_sh"], "cuda")
    x = torch.randn(t, q["h"], device="cuda", dtype=torch.bfloat16)
    rw = (torch.randn(q["e"], q["h"], device="cuda") / q["h"] ** 0.5).to(torch.bfloat16)
    fused_moe(x, None, q["k"], True, ex, sh, router_weight=rw)  # compile outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fused_moe(x, None, q["k"], True, ex, sh, router_weight=rw)
    for _ in range(3):  # new inputs route to other experts: the graph (and its counter) must follow
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.cuda.synchronize()
        ref = reference.fused_moe(x, None, q["k"], True, ex, sh, router_weight=rw)
        keep = ~_boundary_tied(reference.router_logits_of(x, rw), q["k"])
        if keep.any():
            assert rel_err(out[keep], ref[keep]) < 2e-3


def bench(fp8: bool = False) -> dict:
    """GPU timing (not a test): one MoE layer at Qwen3-Next widths, CUDA-graph replays of 8 calls on
    different tokens, for the router GEMM outside (cuBLAS) / folded, the combine atomic / in-kernel."""
    import json

    from deltaserve.ops.moe import fused_moe, kernels

    q = QWEN3_NEXT
    ex, sh = make_moe(q["e"], q["h"], q["i"], q["i_sh"], "cuda", fp8=fp8)
    rw = (torch.randn(q["e"], q["h"], device="cuda") / q["h"] ** 0.5).to(torch.bfloat16)
    res = {"device": torch.cuda.get_device_name(), "fp8": fp8}
    saved = kernels.SMALL_COMBINE
    for t in (1, 3, 5):
        xs = [torch.randn(t, q["h"], device="cuda", dtype=torch.bfloat16) for _ in range(8)]
        for name, folded, combine in [("old", False, False), ("combine", False, True), ("new", True, True)]:
            kernels.SMALL_COMBINE = combine

            def step(xs=xs, folded=folded):
                for x in xs:
                    if folded:
                        fused_moe(x, None, q["k"], True, ex, sh, router_weight=rw)
                    else:
                        fused_moe(x, torch.nn.functional.linear(x, rw), q["k"], True, ex, sh)

            step()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                step()
            for _ in range(5):
                g.replay()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(50):
                g.replay()
            b.record()
            torch.cuda.synchronize()
            res[f"T{t}_{name}_us_per_layer"] = round(a.elapsed_time(b) * 1e3 / 50 / len(xs), 2)
    kernels.SMALL_COMBINE = saved
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    if "--bench" in sys.argv:
        bench(fp8=False)
        bench(fp8=True)
    else:
        run_small("cpu")
        print("ok")


@pytest.mark.gpu
@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("fp8", [False, True])
def test_down_gemv_qwen3_next_gpu(fp8):
    q = QWEN3_NEXT
    check_down_gemv("cuda", q["e"], q["h"], q["i"], q["k"], fp8=fp8, shared=True)
    if not fp8:
        check_down_gemv("cuda", q["e"], q["h"], q["i"], q["k"])
        check_down_gemv("cuda", q["e"], q["h"], q["i"], q["k"], unrouted=True)
        from deltaserve.ops.moe import kernels

        saved = kernels.UP_GEMV["bf16"]
        kernels.UP_GEMV["bf16"] = (2, 2048, 4, 2)  # bf16 ships the tiled up kernel; the GEMV still works
        try:
            check_down_gemv("cuda", q["e"], q["h"], q["i"], q["k"], unrouted=True)
        finally:
            kernels.UP_GEMV["bf16"] = saved
