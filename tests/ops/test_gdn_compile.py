"""The GDN decode kernel compiles for sm_90, and ``compile_for_hopper(divisible=...)`` gives it what the
launcher's 16-divisibility specialisation gives it on a GPU: vector loads and stores of the state tile
(none without the hints, so register and spill counts read off such a compile would mislead)."""

from __future__ import annotations

import re

import pytest

from deltaserve.ops.gdn import decode

triton_compile = pytest.importorskip("deltaserve.testing.triton_compile")

PTRS = {n: "*bf16" for n in ("q_ptr", "k_ptr", "v_ptr", "a_ptr", "b_ptr", "state_ptr", "o_ptr", "inter_ptr")}
PTRS.update(alog_ptr="*fp32", dtb_ptr="*fp32", slot_ptr="*i32", scale="fp32")
CONST = dict(HV=32, GROUP=2, DK=128, DV=128, BV=64, HAS_INTER=False, PDL=False, V_FAST=False, ss_v=1, T=1)


def _vector_accesses(divisible: tuple[str, ...]) -> int:
    ptx = triton_compile.compile_for_hopper(
        decode._decode_kernel, PTRS, CONST, divisible=divisible, num_warps=4
    ).asm["ptx"]
    return len(re.findall(r"(ld|st)\.global[^;]*\.v\d", ptx))


def test_divisibility_hints_give_vector_state_accesses():
    aligned = tuple(n for n in PTRS if n != "scale") + ("ss_s", "ss_h", "ss_k")
    assert _vector_accesses(aligned) > 0
    assert _vector_accesses(()) == 0
