"""The plugin's model modules import without sglang, and never import the engine."""

from __future__ import annotations

import subprocess
import sys

MODULES = (
    "deltaserve.plugin.sglang.models.qwen3_next",
    "deltaserve.plugin.sglang.models.qwen3_5",
    "deltaserve.plugin.sglang.bridge",
    "deltaserve.plugin.sglang.doctor",
)


def test_model_modules_import_lazily() -> None:
    """Importing every entry module loads neither sglang nor deltaserve.engine (fresh process)."""
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in MODULES)
        + "bad = sorted(m for m in sys.modules if m == 'sglang' or m.startswith(('sglang.', 'deltaserve.engine')))\n"
        + "assert not bad, bad\n"
        + "from deltaserve.plugin.sglang.models import qwen3_5, qwen3_next\n"
        + "names = [c.__name__ for c in qwen3_next.EntryClass + qwen3_5.EntryClass]\n"
        + "print(','.join(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    from deltaserve.models.registry import SUPPORTED_ARCHITECTURES

    assert sorted(out.stdout.strip().split(",")) == sorted(SUPPORTED_ARCHITECTURES)
