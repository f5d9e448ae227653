"""The GDN prefill kernels compiled for sm_90 on a CPU machine, as ``gdn_prefill`` launches them on
Hopper (Qwen3-Next heads: Hk 16, Dk = Dv = 128, 64-token chunks), with options for launch variants.
Shared by the compile tests and ``scripts/gdn_prefill_compile.py``."""

from __future__ import annotations

from typing import Any

from deltaserve.ops.gdn import prefill
from deltaserve.testing.triton_compile import compile_for_hopper

# per kernel, its options and their shipped values (strings: the script reads them from the command line;
# "a": the dtype of A's blocks)
PREFILL_DEFAULTS: dict[str, dict[str, str]] = {
    "prep": {
        "warps": "4",
        "maxnreg": str(prefill._PREP_MAXNREG_HOPPER),
        "a": "fp16",
        "group": "2",
        "tma": "0",
    },
    "inverse": {"warps": "1", "prec": "fp16", "maxnreg": "0", "a": "fp16"},
    "scan": {"bv": "64", "st": "1", "warps": "4", "stages": "2", "phase": "0", "maxnreg": "0", "tma": "0"},
}
HK, DK, C, BLOCK_B = 16, 128, 64, 16


def compile_prefill_kernel(kernel: str, **options: Any) -> Any:
    """``kernel`` ("prep", "inverse" or "scan") compiled with ``options`` over ``PREFILL_DEFAULTS``;
    an unknown kernel or option raises ValueError naming it."""
    if kernel not in PREFILL_DEFAULTS:
        raise ValueError(f"unknown kernel {kernel!r}; known: {sorted(PREFILL_DEFAULTS)}")
    unknown = sorted(set(options) - set(PREFILL_DEFAULTS[kernel]))
    if unknown:
        raise ValueError(f"{kernel}: unknown options {unknown}; it takes {sorted(PREFILL_DEFAULTS[kernel])}")
    o = {**PREFILL_DEFAULTS[kernel], **{k: str(v) for k, v in options.items()}}
    launch: dict[str, Any] = {"num_warps": int(o["warps"]), **prefill._maxnreg(int(o["maxnreg"]))}
    if kernel == "prep":
        group = int(o["group"])
        ptrs = {n: "*bf16" for n in ("q_ptr", "k_ptr", "a_ptr", "b_ptr")}
        ptrs.update(alog_ptr="*fp32", dtb_ptr="*fp32", cu_ptr="*i32", g_out_ptr="*fp32", kn_out_ptr="*fp16",
                    qn_out_ptr="*fp16", tq_out_ptr="*fp16", a_out_ptr="*" + o["a"], scale="fp32")  # fmt: skip
        const = dict(
            HV=HK * group, HK=HK, GROUP=group, DK=DK, C=C, BLOCK_B=BLOCK_B, CHUNK_MAJOR=o["tma"] == "1"
        )
        aligned = (*ptrs, "sq_t", "sq_h", "sk_t", "sk_h")
        return compile_for_hopper(prefill._chunk_prep_kernel, ptrs, const, divisible=aligned, **launch)
    if kernel == "inverse":
        ptrs = {"a_ptr": "*" + o["a"], "b_ptr": "*bf16", "cu_ptr": "*i32", "tq_out_ptr": "*fp16"}
        const = dict(HV=32, C=C, BLOCK_B=BLOCK_B, PD=o["prec"], P=o["prec"])
        return compile_for_hopper(
            prefill._chunk_inverse_kernel, ptrs, const, divisible=(*ptrs, "sb_t"), **launch
        )
    ptrs = {n: "*fp32" for n in ("g_ptr", "state_ptr", "carry_ptr", "start_ptr", "trans_ptr")}
    ptrs.update(v_ptr="*bf16", o_ptr="*bf16", cu_ptr="*i32", slot_ptr="*i32", init_ptr="*i1")
    const = dict(HV=32, HK=HK, GROUP=2, DK=DK, DV=128, BV=int(o["bv"]), C=C, BLOCK_B=BLOCK_B,
                 PHASE=int(o["phase"]), ST=o["st"] == "1", TMA=o["tma"] == "1")  # fmt: skip
    aligned = (*ptrs, "sv_t", "sv_h", "so_t", "so_h", "ss_s", "ss_h", "ss_k")
    if const["TMA"]:  # the chunk tiles by TMA (host-side descriptors, as gdn_prefill passes them)
        ptrs.update(qn_src=f"tensordesc<fp16[{C}, {DK}]>", kn_src=f"tensordesc<fp16[{C}, {DK}]>",
                    tq_src=f"tensordesc<fp16[{C}, {C}]>")  # fmt: skip
    else:
        ptrs.update(qn_src="*fp16", kn_src="*fp16", tq_src="*fp16")
        aligned = (*aligned, "qn_src", "kn_src", "tq_src")
    return compile_for_hopper(
        prefill._chunk_scan_kernel, ptrs, const, divisible=aligned, num_stages=int(o["stages"]), **launch
    )
