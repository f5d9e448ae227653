"""The GDN kernels compile for sm_90 on a CPU machine (the launches below are the shipped Hopper ones).

Decode: ``compile_for_hopper(divisible=...)`` gives it what the launcher's 16-divisibility specialisation
gives it on a GPU: vector loads and stores of the state tile (none without the hints, so register and
spill counts read off such a compile would mislead).

Prefill: the prep under its register cap, the inverse on fp16 tensor-core products, and the scan in each
plan (the transposed one's products all take their left operand from registers; the TMA plans' chunk
tiles come by bulk tensor copies), so that a kernel edit that breaks the sm_90 compile fails here
rather than on the first device run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from deltaserve.ops.gdn import decode

triton_compile = pytest.importorskip("deltaserve.testing.triton_compile")
gdn_compile = pytest.importorskip("deltaserve.testing.gdn_compile")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


def _scan_ttgir(bv: int, phase: int, transposed: bool, stages: int) -> str:
    return gdn_compile.compile_prefill_kernel(
        "scan", bv=bv, phase=phase, st=int(transposed), stages=stages, warps=4
    ).asm["ttgir"]


def test_prefill_transposed_scan_takes_left_operands_from_registers():
    """The batched plan's scan (BV 64, 2 stages): five wgmma products, each with its left operand in
    registers (a ``dot_op`` tensor, not a shared-memory descriptor)."""
    dots = [line for line in _scan_ttgir(64, 0, True, 2).splitlines() if "ttng.warp_group_dot " in line]
    assert len(dots) == 5
    assert all(": tensor<" in d and "#ttg.dot_op<{opIdx = 0" in d for d in dots), dots


@pytest.mark.parametrize(
    "bv, phase, transposed, stages",
    [(32, 0, False, 3), (64, 0, False, 3), (32, 1, False, 2), (32, 2, False, 2), (32, 0, True, 2)],
    ids=["one-pass", "pipelined-bv64", "parts-1", "parts-2", "transposed-bv32"],
)
def test_prefill_scan_plans_compile(bv, phase, transposed, stages):
    ttgir = _scan_ttgir(bv, phase, transposed, stages)
    assert ("ttng.warp_group_dot " in ttgir) != (transposed and bv < 64)  # below M 64: mma.sync


@pytest.mark.parametrize("bv, phase, stages", [(16, 0, 3), (32, 1, 2)], ids=["one-pass-bv16", "parts-1"])
def test_prefill_tma_scan_reads_chunk_tiles_by_tma(bv, phase, stages):
    """The TMA plans' scan (``_use_tma``) copies its chunk tiles with bulk tensor copies; the pointer
    plans' does not, and the chunk-major prep still compiles under its register cap."""
    opts = dict(bv=bv, phase=phase, st=0, stages=stages)
    tma = gdn_compile.compile_prefill_kernel("scan", tma=1, **opts).asm["ptx"]
    assert "cp.async.bulk.tensor" in tma
    assert "cp.async.bulk.tensor" not in gdn_compile.compile_prefill_kernel("scan", tma=0, **opts).asm["ptx"]
    regs = triton_compile.kernel_stats(gdn_compile.compile_prefill_kernel("prep", tma=1))["registers"]
    assert regs is None or regs <= 168


def test_prefill_prep_and_inverse_compile_as_launched():
    prep = gdn_compile.compile_prefill_kernel("prep")  # 4 warps under the 168-register cap
    assert ".maxnreg 168" in prep.asm["ptx"]
    regs = triton_compile.kernel_stats(prep)["registers"]
    assert regs is None or regs <= 168  # None: no ptxas beside this Triton
    inverse = gdn_compile.compile_prefill_kernel("inverse")  # fp16 products, one warp, A in fp16
    mmas = set(re.findall(r"mma\.sync\.aligned\.[\w.]+", inverse.asm["ptx"]))
    assert mmas == {"mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"}, mmas


def test_compile_figures_script():
    """``scripts/gdn_prefill_compile.py`` prints one JSON line of static figures per spec and names the
    bad option of a bad one."""
    script = os.path.join(ROOT, "scripts", "gdn_prefill_compile.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, script, "inverse:warps=2"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    row = json.loads(run.stdout.strip().splitlines()[-1])
    assert row["spec"] == "inverse:warps=2" and row["mma_sync"] > 0 and len(row["ptx_hash"]) == 12
    bad = subprocess.run([sys.executable, script, "inverse:wraps=2"], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "wraps" in bad.stderr and "Traceback" not in bad.stderr
