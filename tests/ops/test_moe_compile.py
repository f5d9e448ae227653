"""The decode MoE kernels compile for sm_90 (Hopper) on this CPU machine: catches front-end and PTX
errors the TRITON_INTERPRET=1 run cannot see, and checks the arrival counters' memory orderings."""

from __future__ import annotations

import re

import pytest
import triton.language as tl

from deltaserve.ops.moe import kernels as K
from deltaserve.ops.pdl import pdl_launch

triton_compile = pytest.importorskip("deltaserve.testing.triton_compile")

ACQ_REL = "atom.global.gpu.acq_rel.add"
RESET = "atom.global.gpu.relaxed.exch"


@pytest.mark.parametrize("pdl", [False, True])
@pytest.mark.parametrize("t,shared,dtype", [(1, True, "bf16"), (5, True, "bf16"), (16, False, "fp16")])
def test_router_setup_kernel_compiles(t, shared, dtype, pdl):
    kt = 10 + shared
    tp = 1 << (t - 1).bit_length()
    ptr = {n: f"*{dtype}" for n in ("x_ptr", "rw_ptr", "g_ptr", "lg_ptr")}
    ptr.update(gs_ptr="*fp32", w_ptr="*fp32", id_ptr="*i64", sorted_ptr="*i32", bexp_ptr="*i32")
    ptr.update(out_ptr="*fp32", cnt_ptr="*i32")
    const = dict(
        TOPK=10, KT=kt, KP=16, RENORM=True, HAS_SHARED=shared, BE=512, BH=1024, BM=16,
        PP=1 << (t * kt - 1).bit_length(), CH=K.ALIGN_CHUNK, TP=tp, BEG=K.ROUTER_EXPERTS_PER_PROGRAM,
        BK=max(16, K.ROUTER_TILE // (tp * K.ROUTER_EXPERTS_PER_PROGRAM)), IS_BF16=dtype == "bf16", PDL=pdl,
    )  # fmt: skip
    ptx = triton_compile.compile_for_hopper(
        K._router_setup_small_kernel, ptr, const, num_warps=K.SMALL_SETUP_WARPS, **pdl_launch(pdl)
    ).asm["ptx"]
    assert ACQ_REL in ptx and RESET in ptx and "ld.global.cg" in ptx
    # ops/pdl.py: the wait comes before any load and before the arrival counter
    assert ("griddepcontrol.wait" in ptx) == pdl
    if pdl:
        pre = ptx[: ptx.index("griddepcontrol.wait")]
        assert "ld.global" not in pre and ACQ_REL not in pre


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("combine", [False, True])
def test_down_kernel_compiles(fp8, combine):
    w = "*fp8e4nv" if fp8 else "*bf16"
    ptr = dict(
        inter_ptr="*fp32", w_ptr=w, s_ptr="*fp32", rb_ptr="*i64", shw_ptr=w, shs_ptr="*fp32",
        shrb_ptr="*i64", sorted_ptr="*i32", bexp_ptr="*i32", tw_ptr="*fp32", out_ptr="*fp32",
        id_ptr="*i64", act_ptr="*bf16", cnt_ptr="*i32",
    )  # fmt: skip
    const = dict(
        KT=11, W_FP8=fp8, BLOCK_K=128, PRECISE=True, ACT=tl.bfloat16, BM=16, BN=64, BK=64, F32=False,
        COMBINE=combine, TB=8, ACT_BF16=True,
    )  # fmt: skip
    ptx = triton_compile.compile_for_hopper(K._moe_down_kernel, ptr, const, num_warps=4, num_stages=6).asm[
        "ptx"
    ]
    # the combine stores pair rows (no fp32 atomic adds) and hands over through the tile counters
    fp32_adds = re.search(r"\b(red|atom)\.global(\.\w+)*\.add\.f32", ptx) is not None
    assert fp32_adds != combine
    assert (ACQ_REL in ptx and RESET in ptx) == combine


@pytest.mark.parametrize("route", [True, False])
def test_route_align_small_kernel_compiles(route):
    ptr = dict(
        logit_ptr="*bf16", x_ptr="*bf16", g_ptr="*bf16", w_ptr="*fp32", id_ptr="*i64", sorted_ptr="*i32",
        bexp_ptr="*i32", out_ptr="*fp32",
    )  # fmt: skip
    const = dict(
        ROUTE=route, TOPK=10, KT=11, KP=16, RENORM=True, HAS_SHARED=True, BE=512, BH=1024, BM=16, PP=64,
        CH=K.ALIGN_CHUNK,
    )  # fmt: skip
    k = triton_compile.compile_for_hopper(K._route_align_small_kernel, ptr, const, num_warps=4)
    assert "ld.global" in k.asm["ptx"]


@pytest.mark.parametrize("pdl", [False, True])
@pytest.mark.parametrize("regs", [False, True])
@pytest.mark.parametrize("fp8", [False, True])
def test_down_gemv_kernel_compiles(fp8, regs, pdl):
    """The one-token down GEMV: no atomics, no counters, no local-memory arrays."""
    w = "*fp8e4nv" if fp8 else "*bf16"
    ptr = dict(
        inter_ptr="*fp32", w_ptr=w, s_ptr="*fp32", rb_ptr="*i64", shw_ptr=w, shs_ptr="*fp32",
        shrb_ptr="*i64", tw_ptr="*fp32", id_ptr="*i64", act_ptr="*bf16",
    )  # fmt: skip
    bn, warps, stages = K.DOWN_GEMV
    const = dict(
        W_FP8=fp8, BLOCK_K=128, ACT=tl.bfloat16, BN=bn, BI=512, CH=128, ACT_BF16=True, PP=16, IDS_IN_REGS=regs,
        PDL=pdl,
    )  # fmt: skip
    k = triton_compile.compile_for_hopper(
        K._moe_down_gemv_kernel, ptr, const, num_warps=warps, num_stages=stages, **pdl_launch(pdl)
    )
    ptx = k.asm["ptx"]
    assert ("griddepcontrol.wait" in ptx) == pdl
    assert re.search(r"\b(red|atom)\.global", ptx) is None
    assert "st.global" in ptx
    assert ".local" not in ptx


@pytest.mark.parametrize("fp8", [False, True])
def test_up_gemv_kernel_compiles(fp8):
    """The one-token gate/up GEMV: a vector load per 8-column chunk of weights (8 bytes for FP8, 16 for
    bf16), no atomics, no local memory."""
    w = "*fp8e4nv" if fp8 else "*bf16"
    ptr = dict(
        x_ptr="*bf16", w_ptr=w, s_ptr="*fp32", rb_ptr="*i64", shw_ptr=w, shs_ptr="*fp32", shrb_ptr="*i64",
        id_ptr="*i64", inter_ptr="*fp32",
    )  # fmt: skip
    bn, bk, warps, stages = K.UP_GEMV["fp8"] if fp8 else (2, 2048, 4, 2)  # bf16 ships tiled; still supported
    const = dict(W_FP8=fp8, BLOCK_K=128, BN=bn, BK=bk, CH=K._chunk(128, 8), PDL=True)  # as the launch
    aligned = ("x_ptr", "w_ptr", "shw_ptr", "sw_e", "sw_n", "shw_n", "H", "I")
    k = triton_compile.compile_for_hopper(
        K._moe_up_gemv_kernel, ptr, const, divisible=aligned, num_warps=warps, num_stages=stages,
        **pdl_launch(True),
    )  # fmt: skip
    ptx = k.asm["ptx"]
    vec = r"\.v2\.b32" if fp8 else r"\.v4\.b32"
    assert re.search(r"ld\.global[^;]*" + vec, ptx), "weight tiles without chunk-wide vector loads"
    assert re.search(r"\b(red|atom)\.global", ptx) is None and ".local" not in ptx


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("bm,bn,warps", [(16, 64, 4), (128, 64, 4), (128, 128, 8)])
def test_swap_up_kernel_compiles_with_async_wgmma(fp8, bm, bn, warps):
    """The swap-AB gate/up GEMM: weight rows on the wgmma's M side, and MMAs that accumulate in place
    (the loop keeps MMAs in flight: a non-zero ``wgmma.wait_group``), also for FP8 weights."""
    w = "*fp8e4nv" if fp8 else "*bf16"
    ptr = dict(x_ptr="*bf16", w_ptr=w, s_ptr="*fp32", rb_ptr="*i64", shw_ptr=w, shs_ptr="*fp32")
    ptr.update(shrb_ptr="*i64", sorted_ptr="*i32", bexp_ptr="*i32", inter_ptr="*fp32")
    const = dict(KT=11, W_FP8=fp8, BLOCK_K=128, BM=bm, BN=bn, BK=64, F32=False, PDL=False, SWAP=True)
    aligned = ("x_ptr", "inter_ptr", "w_ptr", "shw_ptr", "sx", "sw_e", "sw_n", "shw_n", "H", "I")
    k = triton_compile.compile_for_hopper(
        K._moe_up_kernel, ptr, const, divisible=aligned, num_warps=warps, num_stages=3
    )
    ptx = k.asm["ptx"]
    assert re.search(r"wgmma\.mma_async\.sync\.aligned\.m64n\d+k16\.f32\.bf16\.bf16", ptx)
    waits = [int(n) for n in re.findall(r"wgmma\.wait_group\.sync\.aligned (\d+)", ptx)]
    assert max(waits) > 0, waits
