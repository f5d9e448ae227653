"""Pieces shared by the GDN Triton kernels."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def gate_scalar(a, b, a_log, dt_bias):
    """g = -exp(A_log) * softplus(a + dt_bias) (threshold 20, like torch), beta = sigmoid(b); fp32."""
    x = a + dt_bias
    sp = tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))
    g = -tl.exp(a_log) * sp
    return g, beta_of(b)


@triton.jit
def beta_of(b):
    """beta = sigmoid(b), fp32 (the one formula every GDN kernel uses)."""
    return 1.0 / (1.0 + tl.exp(-b))


def logical_state_strides(state: torch.Tensor, state_layout: str, n_lead: int) -> tuple[int, ...]:
    """Strides of a pool as (*lead, head, k, v), whatever its per-head layout ("kv" or "vk")."""
    st = state.stride()
    lead, sh, s2, s3 = st[:n_lead], st[n_lead], st[n_lead + 1], st[n_lead + 2]
    sk, sv = (s2, s3) if state_layout == "kv" else (s3, s2)
    return (*lead, sh, sk, sv)
