"""Static figures of the GDN prefill kernels compiled for sm_90 on a CPU machine (no GPU): registers and
spills (ptxas), shared memory, barriers, tensor-core instructions, layout conversions and a PTX hash, per
launch variant. For triton 3.6's figures (the device's) put a triton 3.6 install first on PYTHONPATH.

    python scripts/gdn_prefill_compile.py SPEC [SPEC ...]

SPEC is ``KERNEL[:key=value...]``, keys and defaults (the shipped Hopper launches, Qwen3-Next heads;
``deltaserve.testing.gdn_compile``):
  prep:warps=4:maxnreg=168:a=fp16:group=2:tma=0  (a: dtype of A's blocks; tma=1: q, k chunk-major)
  inverse:warps=1:prec=fp16:maxnreg=0:a=fp16
  scan:bv=64:st=1:warps=4:stages=2:phase=0:maxnreg=0:tma=0  (tma=1: chunk tiles by TMA descriptors)
e.g. ``scan:bv=32:st=0:stages=3 scan:bv=32`` compares the one-sequence scan with a transposed 32-column one.
Equal ``ptx_hash`` values mean equal code (checks a refactor without a device run).
"""

from __future__ import annotations

import json
import sys

from deltaserve.testing.gdn_compile import compile_prefill_kernel
from deltaserve.testing.triton_compile import kernel_stats


def parse(spec: str) -> tuple[str, dict[str, str]]:
    """``KERNEL[:key=value...]`` -> (kernel, options); a pair without ``=value`` raises ValueError."""
    kernel, *pairs = spec.split(":")
    opts = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not value:
            raise ValueError(f"bad option {pair!r}")
        opts[key] = value
    return kernel, opts


def main(specs: list[str]) -> None:
    if not specs:
        raise SystemExit(__doc__)
    for spec in specs:
        try:
            kernel, opts = parse(spec)
            compiled = compile_prefill_kernel(kernel, **opts)
        except ValueError as e:
            raise SystemExit(f"gdn_prefill_compile: {spec}: {e}") from None
        print(json.dumps({"spec": spec, **kernel_stats(compiled)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
