"""Compile a Triton kernel for sm_90 on a machine without a GPU (front end + PTX + ptxas), to catch
compile errors before a device run. Used from other scripts/tests:

    from deltaserve.testing.triton_compile import compile_for_hopper
    compile_for_hopper(kernel, pointer_types={"x_ptr": "*bf16"}, constexprs={...}, num_warps=4)

Arguments not named in either dict are treated as i32 scalars.
"""

from __future__ import annotations

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
