"""Compile a Triton kernel for sm_90 on a machine without a GPU (front end + PTX + ptxas), to catch
compile errors before a device run. Used from other scripts/tests:

    from deltaserve.testing.triton_compile import compile_for_hopper
    compile_for_hopper(kernel, pointer_types={"x_ptr": "*bf16"}, constexprs={...}, num_warps=4)

Arguments not named in either dict are treated as i32 scalars. ``kernel_stats(compiled)`` gives the static
figures (registers, spills, barriers, tensor-core instructions, a code hash) that kernel variants are
compared by before a device run (``scripts/gdn_prefill_compile.py``).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
import traceback
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


def compile_for_hopper(
    fn,
    pointer_types: dict[str, str],
    constexprs: dict[str, Any],
    divisible: tuple[str, ...] = (),
    **options: Any,
):
    """Compile ``fn`` for sm_90; returns the compiled kernel (``.asm`` has ttir/ttgir/llir/ptx/cubin) or
    raises the compiler's error with its root cause chained.

    ``divisible``: arguments to mark as multiples of 16 (pointers: 16-byte aligned), as Triton's launcher
    does at run time for such values. Without it the code has no vector loads and more registers than
    the device's compile (GDN prefill prep: 255 registers and spills, against 239 and none with the
    hints, which is what the H200 reported)."""
    names = fn.arg_names
    sig = {n: "constexpr" if n in constexprs else pointer_types.get(n, "i32") for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in divisible}
    src = ASTSource(
        fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in constexprs.items()}, attrs=attrs
    )
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def explain(exc: BaseException) -> str:
    """The innermost cause of a compile error (Triton wraps it several times)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return "".join(traceback.format_exception_only(type(exc), exc))


def kernel_stats(kernel) -> dict[str, Any]:
    """Static figures of a ``compile_for_hopper`` result, for comparing kernel variants without a GPU:
    registers and spill-store bytes (from the ptxas that ships with Triton, for sm_90a; None without it),
    shared memory, barriers, tensor-core instructions, layout conversions and shared-memory allocations
    in the TTGIR, and a hash of the PTX without its debug lines (equal hashes: the same machine code
    modulo ptxas). Figures from a Triton other than the device's (3.6) differ."""
    ptx, ttgir = kernel.asm["ptx"], kernel.asm["ttgir"]
    body = re.sub(r"\.section\s+\.debug.*", "", ptx, flags=re.S)
    body = "\n".join(line for line in body.splitlines() if line.strip() and not _DEBUG_LINE.match(line))
    regs = spill = None
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if os.path.exists(ptxas):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "k.ptx")
            with open(src, "w") as f:
                f.write(ptx)
            log = subprocess.run(
                [ptxas, "-arch=sm_90a", "-v", src, "-o", os.devnull], capture_output=True, text=True
            ).stderr
        found = re.findall(r"Used (\d+) registers", log)
        regs = int(found[0]) if found else None
        spill = sum(int(n) for n in re.findall(r"(\d+) bytes spill stores", log))
    return {
        "registers": regs,
        "spill_store_bytes": spill,
        "shared_bytes": kernel.metadata.shared,
        "barriers": len(re.findall(r"\bbar(rier)?\.sync\b", body)),
        "wgmma": body.count("wgmma.mma_async"),
        "mma_sync": body.count("mma.sync"),
        "convert_layout": ttgir.count("ttg.convert_layout"),
        "local_alloc": ttgir.count("ttg.local_alloc"),
        "ptx_hash": hashlib.sha1(body.encode()).hexdigest()[:12],
    }


_DEBUG_LINE = re.compile(r"^\s*(\.loc|\.file)\b|^\$L__tmp")
