"""The decode GEMV and the norm kernel compile for sm_90 with programmatic dependent launch
(``ops/pdl.py``): the wait and the early trigger are in the PTX, after the first weight tile's load
in the GEMV and after the norm weight's load; without ``PDL`` neither is emitted."""

from __future__ import annotations

import pytest

from deltaserve.ops.gemv import kernels as G
from deltaserve.ops.norm import kernels as N

triton_compile = pytest.importorskip("deltaserve.testing.triton_compile")

WAIT, TRIGGER = "griddepcontrol.wait", "griddepcontrol.launch_dependents"


def _gemv_ptx(pdl: bool) -> str:
    ptr = dict(x_ptr="*bf16", w_ptr="*bf16", b_ptr="*bf16", y_ptr="*bf16")
    const = dict(HAS_BIAS=False, BN=2, BK=1024, EVEN_K=True, PDL=pdl)
    return triton_compile.compile_for_hopper(
        G._gemv_kernel, ptr, const, num_warps=4, num_stages=3, launch_pdl=pdl
    ).asm["ptx"]


def _norm_ptx(pdl: bool, gate: bool) -> str:
    ptr = {n: "*bf16" for n in ("x_ptr", "r_ptr", "z_ptr", "w_ptr", "out_ptr", "nr_ptr")}
    ptr.update(s_ptr="*fp32", eps="fp32")
    const = dict(
        ZERO_CENTERED=not gate, HAS_RES=not gate, HAS_GATE=gate, ROUND_PROD=True, QUANT=False, G=128,
        FP8_MAX_C=448.0, BLOCK_R=1, BLOCK_H=2048, PDL=pdl,
    )  # fmt: skip
    return triton_compile.compile_for_hopper(N._norm_kernel, ptr, const, num_warps=8, launch_pdl=pdl).asm[
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
