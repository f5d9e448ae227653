"""Static figures of the GDN prefill kernels compiled for sm_90 on a CPU machine (no GPU): registers and
spills (ptxas), shared memory, barriers, tensor-core instructions, layout conversions and a PTX hash, per
launch variant. For triton 3.6's figures (the device's) put a triton 3.6 install first on PYTHONPATH.

    python scripts/gdn_prefill_compile.py SPEC [SPEC ...]

SPEC is ``KERNEL[:key=value...]``, keys and defaults (the shipped Hopper launches, Qwen3-Next heads):
  prep:warps=4:maxnreg=168:a=fp16:group=2        (a: dtype of A's blocks)
  inverse:warps=1:prec=fp16:maxnreg=0:a=fp16
  scan:bv=64:st=1:warps=4:stages=2:phase=0:maxnreg=0
e.g. ``scan:bv=32:st=0:stages=3 scan:bv=32`` compares the one-sequence scan with a transposed 32-column one.
Equal ``ptx_hash`` values mean equal code (checks a refactor without a device run).
"""

from __future__ import annotations

import json
import sys

from deltaserve.ops.gdn import prefill
from deltaserve.testing.triton_compile import compile_for_hopper, kernel_stats

DEFAULTS = {
    "prep": {"warps": "4", "maxnreg": "168", "a": "fp16", "group": "2"},
    "inverse": {"warps": "1", "prec": "fp16", "maxnreg": "0", "a": "fp16"},
    "scan": {"bv": "64", "st": "1", "warps": "4", "stages": "2", "phase": "0", "maxnreg": "0"},
}
HK, DK, C, BLOCK_B = 16, 128, 64, 16


def _compile(kernel: str, o: dict[str, str]):
    cap = {"maxnreg": int(o["maxnreg"])} if int(o["maxnreg"]) else {}
    if kernel == "prep":
        group = int(o["group"])
        ptrs = {n: "*bf16" for n in ("q_ptr", "k_ptr", "a_ptr", "b_ptr")}
        ptrs.update(alog_ptr="*fp32", dtb_ptr="*fp32", cu_ptr="*i32", g_out_ptr="*fp32", kn_out_ptr="*fp16",
                    qn_out_ptr="*fp16", tq_out_ptr="*fp16", a_out_ptr="*" + o["a"], scale="fp32")  # fmt: skip
        const = dict(HV=HK * group, HK=HK, GROUP=group, DK=DK, C=C, BLOCK_B=BLOCK_B)
        return compile_for_hopper(
            prefill._chunk_prep_kernel, ptrs, const, divisible=(*ptrs, "sq_t", "sq_h", "sk_t", "sk_h"),
            num_warps=int(o["warps"]), **cap,
        )  # fmt: skip
    if kernel == "inverse":
        ptrs = {"a_ptr": "*" + o["a"], "b_ptr": "*bf16", "cu_ptr": "*i32", "tq_out_ptr": "*fp16"}
        const = dict(HV=32, C=C, BLOCK_B=BLOCK_B, PD=o["prec"], P=o["prec"])
        return compile_for_hopper(
            prefill._chunk_inverse_kernel, ptrs, const, divisible=(*ptrs, "sb_t"), num_warps=int(o["warps"]),
            **cap,
        )  # fmt: skip
    ptrs = {n: "*fp32" for n in ("g_ptr", "state_ptr", "carry_ptr", "start_ptr", "trans_ptr")}
    ptrs.update(qn_ptr="*fp16", kn_ptr="*fp16", v_ptr="*bf16", o_ptr="*bf16", tq_ptr="*fp16", cu_ptr="*i32",
                slot_ptr="*i32", init_ptr="*i1")  # fmt: skip
    const = dict(HV=32, HK=HK, GROUP=2, DK=DK, DV=128, BV=int(o["bv"]), C=C, BLOCK_B=BLOCK_B,
                 PHASE=int(o["phase"]), ST=o["st"] == "1")  # fmt: skip
    return compile_for_hopper(
        prefill._chunk_scan_kernel, ptrs, const, divisible=(*ptrs, "sv_t", "sv_h", "so_t", "so_h", "ss_s",
        "ss_h", "ss_k"), num_warps=int(o["warps"]), num_stages=int(o["stages"]), **cap,
    )  # fmt: skip


def parse(spec: str) -> tuple[str, dict[str, str]]:
    """``KERNEL[:key=value...]`` -> (kernel, options over the defaults); unknown names raise ValueError."""
    kernel, *pairs = spec.split(":")
    if kernel not in DEFAULTS:
        raise ValueError(f"{spec}: unknown kernel {kernel!r}; known: {sorted(DEFAULTS)}")
    opts = dict(DEFAULTS[kernel])
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in opts or not value:
            raise ValueError(f"{spec}: bad option {pair!r}; {kernel} takes {sorted(opts)}")
        opts[key] = value
    return kernel, opts


def main(specs: list[str]) -> None:
    if not specs:
        raise SystemExit(__doc__)
    for spec in specs:
        try:
            kernel, opts = parse(spec)
        except ValueError as e:
            raise SystemExit(f"gdn_prefill_compile: {e}") from None
        print(json.dumps({"spec": spec, **kernel_stats(_compile(kernel, opts))}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
