"""Programmatic dependent launch (PDL) for the decode chain's small kernels (Hopper and later).

A kernel launched with ``launch_pdl=True`` may start while the kernel before it on the stream is
still finishing, so its launch and ramp-up hide behind that kernel's tail. In a decode step (~85
short, weight-streaming launches per CUDA graph) that tail-to-head latency is a large part of the
step. The contract each opted-in kernel keeps (``PDL`` constexpr):

- before ``gdc_wait()`` it only *reads* data no earlier kernel writes (weights), or asks such data into
  L2 (``triton_common.prefetch_l2``), and writes nothing;
- ``gdc_wait()`` then waits for the previous grid to complete with its writes visible. Every
  opted-in kernel waits, so completion is transitive down the chain;
- ``gdc_launch_dependents()`` (after its main loop) lets the next kernel launch early. Only the
  one-row GEMVs, the norms, GDN decode and the small-M FP8 GEMM trigger early (the last right after its
  wait where that measured faster, ``kernels.SmallTile.pdl``); the others let their successor launch at
  their exit (conv1d decode's early trigger made it slower at batch 256, BENCHMARKS.md).

Off on the CPU interpreter (inline PTX), before sm_90, on CUDA builds before 12.3, and with
``DELTASERVE_PDL=0``.
"""

from __future__ import annotations

import functools
import os

import torch
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from deltaserve import env

__all__ = ["ENABLED", "gdc_launch_dependents", "gdc_wait", "pdl_launch", "use_pdl"]

ENABLED: bool = env.get("DELTASERVE_PDL")  # benchmarks flip this for A/B runs


def use_pdl(t: torch.Tensor) -> bool:
    """Whether kernels working on `t`'s device should launch with PDL."""
    return ENABLED and t.is_cuda and _sm90_or_later(t.device.index or 0)


def pdl_launch(pdl: bool) -> dict[str, bool]:
    """The launch keyword for a kernel whose ``PDL`` constexpr is `pdl`."""
    return {"launch_pdl": True} if pdl else {}


@functools.cache
def _sm90_or_later(index: int) -> bool:
    """sm_90+ and a CUDA 12.3+ build (PDL inside captured CUDA graphs); never under the interpreter."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False
    cuda = tuple(int(p) for p in (torch.version.cuda or "0.0").split(".")[:2])
    return cuda >= (12, 3) and torch.cuda.get_device_capability(index)[0] >= 9
