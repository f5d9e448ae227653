"""The decode GEMV and the norm kernel compile for sm_90 with programmatic dependent launch
(``ops/pdl.py``): the wait and the early trigger are in the PTX, after the first weight tile's load
in the GEMV and after the norm weight's load; without ``PDL`` neither is emitted."""

from __future__ import annotations

import pytest

from deltaserve.ops.gemv import kernels as G
from deltaserve.ops.norm import kernels as N
from deltaserve.ops.pdl import pdl_launch

triton_compile = pytest.importorskip("deltaserve.testing.triton_compile")

WAIT, TRIGGER = "griddepcontrol.wait", "griddepcontrol.launch_dependents"


def _gemv_ptx(pdl: bool) -> str:
    ptr = dict(x_ptr="*bf16", w_ptr="*bf16", b_ptr="*bf16", y_ptr="*bf16")
    const = dict(HAS_BIAS=False, BN=2, BK=1024, EVEN_K=True, PDL=pdl)
    return triton_compile.compile_for_hopper(
        G._gemv_kernel, ptr, const, num_warps=4, num_stages=3, **pdl_launch(pdl)
    ).asm["ptx"]


def _norm_ptx(pdl: bool, gate: bool) -> str:
    ptr = {n: "*bf16" for n in ("x_ptr", "r_ptr", "z_ptr", "w_ptr", "out_ptr", "nr_ptr")}
    ptr.update(s_ptr="*fp32", eps="fp32")
    const = dict(
        ZERO_CENTERED=not gate, HAS_RES=not gate, HAS_GATE=gate, ROUND_PROD=True, QUANT=False, G=128,
        FP8_MAX_C=448.0, BLOCK_R=1, BLOCK_H=2048, PDL=pdl,
    )  # fmt: skip
    return triton_compile.compile_for_hopper(N._norm_kernel, ptr, const, num_warps=8, **pdl_launch(pdl)).asm[
        "ptx"
    ]


@pytest.mark.parametrize("pdl", [False, True])
def test_gemv_waits_after_the_first_weight_tile(pdl):
    ptx = _gemv_ptx(pdl)
    assert (WAIT in ptx, TRIGGER in ptx) == (pdl, pdl)
    if pdl:  # the first weight load is issued before the wait; x is only read after it
        assert ptx.index("ld.global") < ptx.index(WAIT) < ptx.index(TRIGGER)


@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("pdl", [False, True])
def test_norm_waits_before_reading_activations(pdl, gate):
    ptx = _norm_ptx(pdl, gate)
    assert (WAIT in ptx, TRIGGER in ptx) == (pdl, pdl)
    if pdl:
        assert ptx.index(WAIT) < ptx.index(TRIGGER)
        # only the weight vector is loaded before the wait: one element or vector per thread's share
        per_thread = 2048 // (32 * 8)
        assert 1 <= ptx[: ptx.index(WAIT)].count("ld.global") <= per_thread
        assert ptx.count("ld.global") == _norm_ptx(False, gate).count("ld.global")


# The decode step's other opted-in kernels (wait at the start): (module, kernel, int pointers,
# float scalars, constexprs, options) at Qwen3-Next decode shapes.
def _other_kernels():
    from deltaserve.ops.attention import kernels as A
    from deltaserve.ops.conv1d import kernels as C
    from deltaserve.ops.gdn import decode as D
    from deltaserve.ops.moe import kernels as M
    from deltaserve.ops.rope import kernels as R

    return {
        "attn_fwd": (A._attn_fwd_kernel, ("bt_ptr", "cu_ptr", "seq_lens_ptr"), ("qk_scale", "v_scale"),
                     dict(G=8, G_PAD=8, BLOCK_Q=1, BLOCK_N=64, D=256, BLOCK_D=256, PAGE=16, NUM_SPLITS=4,
                          HAS_GATE=True, PRECISION="tf32"), dict(num_warps=4, num_stages=2)),
        "attn_combine": (A._combine_kernel, ("cu_ptr",), (),
                         dict(G=8, G_PAD=8, D=256, BLOCK_D=256, NUM_SPLITS=4, HAS_GATE=True), dict(num_warps=4)),
        "write_kv": (A._write_kv_kernel, ("slot_ptr",), ("inv_k_scale", "inv_v_scale"),
                     dict(H=2, D=256, H_PAD=2, BLOCK_D=256, PAGE=16), dict(num_warps=1)),
        "qk_norm_rope": (R._qk_norm_rope_kernel, ("slot_ptr",), ("eps",),
                         dict(HAS_NORM=True, ZERO_CENTERED=True, HAS_CACHE=True, RD=64, BH_Q=2, BH_K=2,
                              BLOCK_D=256), dict(num_warps=1)),
        "conv_decode": (C._conv_decode_kernel, ("slot_ptr",), (),
                        dict(W=4, HAS_BIAS=False, ACT=True, BLOCK_D=256), dict(num_warps=2)),
        "gdn_decode": (D._decode_kernel, ("slot_ptr",), ("scale",),
                       dict(HV=32, GROUP=2, DK=128, DV=128, BV=16, HAS_INTER=False, V_FAST=True), dict(num_warps=1)),
        "moe_up": (M._moe_up_kernel, ("rb_ptr", "shrb_ptr", "sorted_ptr", "bexp_ptr"), (),
                   dict(KT=11, W_FP8=False, BLOCK_K=128, BM=16, BN=32, BK=64, F32=False),
                   dict(num_warps=4, num_stages=6)),
    }  # fmt: skip


@pytest.mark.parametrize("pdl", [False, True])
@pytest.mark.parametrize("name", sorted(_other_kernels()))
def test_other_decode_kernels_wait_first(name, pdl):
    kernel, int_ptrs, floats, const, options = _other_kernels()[name]
    ptr = {n: ("*i32" if n in int_ptrs else "*bf16") for n in kernel.arg_names if n.endswith("_ptr")}
    ptr.update({n: "fp32" for n in floats})
    if name == "attn_fwd":
        ptr.update(part_acc_ptr="*fp32", part_m_ptr="*fp32", part_l_ptr="*fp32")
    if name == "attn_combine":
        ptr.update(part_acc_ptr="*fp32", part_m_ptr="*fp32", part_l_ptr="*fp32")
    if name == "moe_up":
        ptr.update(s_ptr="*fp32", shs_ptr="*fp32", inter_ptr="*fp32")
    opts = dict(options, **pdl_launch(pdl))
    ptx = triton_compile.compile_for_hopper(kernel, ptr, dict(const, PDL=pdl), **opts).asm["ptx"]
    assert (WAIT in ptx) == pdl
    if pdl:
        assert "ld.global" not in ptx[: ptx.index(WAIT)]  # nothing is loaded before the wait
        # GDN decode lets its successor launch before its state write-back; the others at their exit
        assert (TRIGGER in ptx) == (name == "gdn_decode")
