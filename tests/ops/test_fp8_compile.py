"""The block-FP8 kernels compile for sm_90 (Hopper) on this CPU machine: catches front-end and
PTX errors that the TRITON_INTERPRET=1 run cannot see, and checks they use wgmma / TMA there."""

from __future__ import annotations

import itertools
import re

import pytest

from deltaserve.ops.fp8 import kernels as K
from deltaserve.ops.pdl import pdl_launch
from deltaserve.testing.triton_compile import compile_for_hopper

BASE = dict(bias_ptr="*bf16", c_ptr="*bf16", bs_ptr="*fp32", b_ptr="*fp8e4nv")


def _operands(mode: int, plain: bool) -> dict[str, str]:
    a = "*fp8e4nv" if mode == 1 else "*bf16"
    return dict(BASE, a_ptr=a, as_ptr="*fp32" if mode == 1 else a, rb_ptr="*fp8e4nv" if plain else "*i64")


# what Triton's launcher marks at run time for the benchmark shapes (16-byte multiples): without the hints
# the sm_90 compile has no cp.async pipeline at all
SMALL_DIVISIBLE = ("a_ptr", "b_ptr", "bs_ptr", "c_ptr", "ws_ptr", "sa_m", "sb_n", "sc_m", "K", "N")


@pytest.mark.parametrize("mode,plain,split", list(itertools.product((0, 1, 2), (True, False), (1, 4))))
def test_small_kernel_compiles_with_wgmma(mode, plain, split):
    ptr = dict(_operands(mode, plain), ws_ptr="*fp32", cnt_ptr="*i32")
    const = dict(
        A_MODE=mode, HAS_BIAS=split == 1, PLAIN=plain, SPLIT=split, BLOCK_K=128, BMT=16, BN=64, BKC=128,
        PLAIN_BN_C=128, FP8_MAX_C=448.0, F32=False, SWAP=True, PDL=2 if split > 1 else 0, PREFETCH=split - 1,
    )  # fmt: skip
    ptx = compile_for_hopper(
        K._fp8_small_kernel,
        ptr,
        const,
        SMALL_DIVISIBLE,
        num_warps=4,
        num_stages=3,
        **pdl_launch(const["PDL"] > 0),
    ).asm["ptx"]
    assert "wgmma" in ptx and "cp.async" in ptx
    if mode == 0:  # W8A16 accumulates in place: MMAs stay in flight while the next tile is converted
        assert re.search(r"wgmma\.wait_group\.sync\.aligned [1-9]", ptx)  # triton 3.6: 7, 3.9: 1


@pytest.mark.parametrize(
    "mode,plain,pdl,prefetch",
    [(0, True, 1, 1), (0, False, 2, 0), (1, True, 0, 0), (2, False, 2, 2), (2, True, 1, 0)],
)
def test_small_kernel_rows_form_widens_the_weight_in_its_operand_layout(mode, plain, pdl, prefetch):
    """Activations on the MMA's 16-row side: mma.sync, and the e4m3 weight tile is widened after it
    reaches the MMA operand layout (no shared-memory round trip of the widened tile, which the swap-AB
    form's W8A16 step pays); PDL waits before any load, and only L2 prefetch hints (one per K step asked
    for) come before the wait."""
    ptr = dict(_operands(mode, plain), ws_ptr="*fp32", cnt_ptr="*i32")
    const = dict(
        A_MODE=mode, HAS_BIAS=True, PLAIN=plain, SPLIT=2, BLOCK_K=128, BMT=16, BN=64, BKC=128,
        PLAIN_BN_C=128, FP8_MAX_C=448.0, F32=False, SWAP=False, PDL=pdl, PREFETCH=prefetch,
    )  # fmt: skip
    k = compile_for_hopper(
        K._fp8_small_kernel, ptr, const, SMALL_DIVISIBLE, num_warps=4, num_stages=3, **pdl_launch(pdl > 0)
    )
    ptx, ttgir = k.asm["ptx"], k.asm["ttgir"]
    assert "mma.sync" in ptx and "wgmma" not in ptx and "cp.async" in ptx
    assert re.search(r"tt\.fp_to_fp %\w+ : tensor<128x64xf8E4M3FN, #ttg\.dot_op<\{opIdx = 1", ttgir), ttgir
    if pdl:
        head = ptx[: ptx.index("griddepcontrol.wait")]
        assert "ld.global" not in head and "cp.async" not in head
        assert head.count("prefetch.global.L2") == prefetch == ptx.count("prefetch.global.L2")
        assert ("griddepcontrol.launch_dependents" in ptx) and (
            (ptx.index("griddepcontrol.launch_dependents") < ptx.index("mma.sync")) == (pdl == 2)
        )


@pytest.mark.parametrize("mode,plain", list(itertools.product((0, 1), (True, False))))
def test_tile_kernel_compiles(mode, plain):
    const = dict(
        A_MODE=mode, HAS_BIAS=True, PLAIN=plain, BLOCK_K=128, BM=64, BN=128, BKC=128, GROUP_M=8,
        PLAIN_BN_C=128, F32=False,
    )  # fmt: skip
    k = compile_for_hopper(K._fp8_gemm_kernel, _operands(mode, plain), const, num_warps=4, num_stages=4)
    assert "wgmma" in k.asm["ptx"]


def test_tma_kernel_compiles_with_tma_and_wgmma():
    ptr = dict(
        a_desc="tensordesc<fp8e4nv[64, 128]>", b_desc="tensordesc<fp8e4nv[128, 128]>", as_ptr="*fp32",
        bs_ptr="*fp32", bias_ptr="*bf16", c_ptr="*bf16",
    )  # fmt: skip
    const = dict(HAS_BIAS=False, BLOCK_K=128, BM=64, BN=128, BKC=128, GROUP_M=8, PLAIN_BN_C=128)
    k = compile_for_hopper(K._fp8_gemm_tma_kernel, ptr, const, num_warps=4, num_stages=4)
    assert "cp.async.bulk.tensor" in k.asm["ptx"] and "wgmma" in k.asm["ptx"]


@pytest.mark.parametrize(
    "mode,pdl,plain,rows,chunk_major",
    [(0, True, True, 1, True), (1, False, True, 1, True), (1, True, True, 1, True), (0, True, False, 1, True),
     (0, True, True, 2, True), (1, True, False, 2, True), (0, True, True, 1, False), (0, True, False, 2, False)],
)  # fmt: skip
def test_gemv_kernel_compiles_without_weight_shuffles(mode, pdl, plain, rows, chunk_major):
    from deltaserve.ops.fp8 import gemv

    a = "*fp8e4nv" if mode == 1 else "*bf16" if chunk_major else "*fp32"
    ptr = dict(x_ptr=a, xs_ptr="*fp32" if mode == 1 else a, w_ptr="*fp8e4nv", s_ptr="*fp32")
    ptr.update(bias_ptr="*bf16", y_ptr="*bf16", rb_ptr="*i64")
    const = dict(
        A_MODE=mode, HAS_BIAS=mode == 0, PLAIN=plain, ROWS=rows, BN=2, BK=1024, BLOCK_K=128, PLAIN_BN_C=128,
        CA=gemv.chunk_axis(chunk_major), PDL=pdl,
    )  # fmt: skip
    k = compile_for_hopper(gemv._fp8_gemv_kernel, ptr, const, num_warps=4, num_stages=3, **pdl_launch(pdl))
    ptx = k.asm["ptx"]
    assert ("griddepcontrol.wait" in ptx) == pdl
    if pdl:  # the first weight tile (bytes) and the row map (constant) are read before the wait
        pre = [ln for ln in ptx[: ptx.index("griddepcontrol.wait")].splitlines() if "ld.global" in ln]
        assert pre and all(".b8" in ln or (not plain and ".b64" in ln) for ln in pre)
    # the weight tile is used in the layout it was loaded in (no shared-memory round trip per K step)
    loop = k.asm["ttgir"].split("scf.for")[1].split("scf.yield")[0]
    assert not any("convert_layout" in ln and "f8E4M3FN" in ln for ln in loop.splitlines())
    # chunk-major: a warp's lanes all on the chunk axis (each thread holds every weight row of a chunk),
    # with the alignment the launcher reports at run time (8-wide vectors)
    hints = ("x_ptr", "w_ptr", "s_ptr", "y_ptr", "K", "sw_n", "sx")
    ttgir = compile_for_hopper(gemv._fp8_gemv_kernel, ptr, const, divisible=hints, num_warps=4, num_stages=3,
                               **pdl_launch(pdl)).asm["ttgir"]  # fmt: skip
    loop = ttgir.split("scf.for")[1].split("scf.yield")[0]
    w_load = next(ln for ln in loop.splitlines() if "tt.load" in ln and "x8x!tt.ptr<f8E4M3FN>" in ln)
    name = re.search(r"tt\.ptr<f8E4M3FN>, #(\w+)>", w_load).group(1)
    layout = next(ln for ln in ttgir.splitlines() if ln.startswith(f"#{name} ="))
    assert "sizePerThread = [1, 1, 8]" in layout, layout
    lanes = [int(v) for v in re.search(r"threadsPerWarp = \[([\d, ]+)\]", layout).group(1).split(",")]
    assert (lanes[gemv.chunk_axis(chunk_major)] == 32) == chunk_major, layout


@pytest.mark.parametrize("fake", [True, False])
def test_quant_kernel_waits_then_lets_the_gemv_start(fake):
    """W8A8 rows for the GEMV: fp32 quantised values (two rows) or e4m3 and scales (one row)."""
    ptr = dict(x_ptr="*bf16", q_ptr="*fp32" if fake else "*fp8e4nv", s_ptr="*fp32")
    const = dict(G=128, GPP=16, FP8_MAX_C=448.0, FAKE=fake, PDL=True)
    ptx = compile_for_hopper(K._group_quant_kernel, ptr, const, num_warps=4, **pdl_launch(True)).asm["ptx"]
    wait, launch = ptx.index("griddepcontrol.wait"), ptx.index("griddepcontrol.launch_dependents")
    assert wait < launch < ptx.index("ld.global")  # x is read only after the producer finished
    assert "e4m3x2" in ptx  # rounded through e4m3
