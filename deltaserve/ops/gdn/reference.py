"""Gated DeltaNet (GDN) reference ops in plain torch, fp32 math.

Recurrence per value head (state S in R^{Dk x Dv}, "kv" orientation):

    S_t = exp(g_t) S_{t-1} + k_t (beta_t (v_t - exp(g_t) S_{t-1}^T k_t))^T
    o_t = S_t^T (scale * q_t)

with q, k L2-normalised (x * rsqrt(sum x^2 + 1e-6)), g = -exp(A_log) softplus(a + dt_bias) and
beta = sigmoid(b). GVA: value head h reads q/k head h // (Hv // Hk).

The pool-level functions (gdn_prefill / gdn_decode / gdn_decode_multi) have exactly the signatures
of the Triton versions in this package; they loop in Python and are meant for CPU tests and as the
oracle, not for speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deltaserve.ops.gdn import checks
from deltaserve.ops.pool_slots import host_slots

L2NORM_EPS = 1e-6


def l2norm(x: torch.Tensor, eps: float = L2NORM_EPS) -> torch.Tensor:
    """x * rsqrt(sum(x^2, -1) + eps) in fp32. x [..., D] -> [..., D] fp32."""
    x = x.float()
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def gdn_gating(
    a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3-Next gating.

    a, b [..., Hv] any float dtype; A_log, dt_bias [Hv].
    Returns g = -exp(A_log) * softplus(a + dt_bias) and beta = sigmoid(b), both fp32 [..., Hv].
    """
    g = -torch.exp(A_log.float()) * F.softplus(a.float() + dt_bias.float(), beta=1.0, threshold=20.0)
    beta = torch.sigmoid(b.float())
    return g, beta


def _expand_heads(x: torch.Tensor, hv: int) -> torch.Tensor:
    """[T, Hk, D] -> [T, Hv, D] (value head h uses key head h // (Hv // Hk))."""
    return x.repeat_interleave(hv // x.shape[1], dim=1)


def _prep(q, k, v, g, beta, scale, use_qk_l2norm):
    """Common fp32 preparation: returns q, k [T, Hv, Dk] (q scaled), v [T, Hv, Dv], g, beta [T, Hv]."""
    hv, dk = v.shape[1], q.shape[-1]
    if scale is None:
        scale = dk**-0.5
    qf = l2norm(q) if use_qk_l2norm else q.float()
    kf = l2norm(k) if use_qk_l2norm else k.float()
    qf = _expand_heads(qf, hv) * scale  # [T, Hv, Dk]
    kf = _expand_heads(kf, hv)  # [T, Hv, Dk]
    return qf, kf, v.float(), g.float(), beta.float()


def _initial(initial_state, i, hv, dk, dv, device):
    if initial_state is None:
        return torch.zeros(hv, dk, dv, dtype=torch.float32, device=device)
    return initial_state[i].float().clone()


def _chunk_one(q, k, v, g, beta, s, chunk_size):
    """One sequence, chunked WY/UT form. q, k [T, H, Dk]; v [T, H, Dv]; g, beta [T, H]; s [H, Dk, Dv]."""
    t = q.shape[0]
    pad = (-t) % chunk_size
    # Padding tokens have k=0, beta=0, g=0: they neither decay nor update the state.
    q, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)).transpose(0, 1) for x in (q, k, v))  # [H, Tp, D]
    g, beta = (F.pad(x, (0, 0, 0, pad)).transpose(0, 1) for x in (g, beta))  # [H, Tp]
    h = q.shape[0]
    n_chunks = q.shape[1] // chunk_size
    c = chunk_size
    strict_lower = torch.ones(c, c, dtype=torch.bool, device=q.device).tril(-1)
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril(0)
    eye = torch.eye(c, dtype=torch.float32, device=q.device)
    out = torch.empty(h, n_chunks * c, v.shape[-1], dtype=torch.float32, device=q.device)
    for i in range(n_chunks):
        sl = slice(i * c, (i + 1) * c)
        qc, kc, vc, bc = q[:, sl], k[:, sl], v[:, sl], beta[:, sl]  # [H, C, D], [H, C]
        gc = g[:, sl].cumsum(-1)  # [H, C] cumulative log-decay inside the chunk
        diff = gc[:, :, None] - gc[:, None, :]  # [H, C, C] G_i - G_j
        decay_lower = torch.where(strict_lower, diff, float("-inf")).exp()
        decay_causal = torch.where(causal, diff, float("-inf")).exp()
        a_mat = (bc[:, :, None] * (kc @ kc.transpose(-1, -2))) * decay_lower  # [H, C, C]
        w_rhs = kc * (bc * gc.exp())[:, :, None]  # [H, C, Dk]
        u_rhs = vc * bc[:, :, None]  # [H, C, Dv]
        lhs = eye + a_mat
        w = torch.linalg.solve_triangular(lhs, w_rhs, upper=False, unitriangular=True)  # [H, C, Dk]
        u = torch.linalg.solve_triangular(lhs, u_rhs, upper=False, unitriangular=True)  # [H, C, Dv]
        v_new = u - w @ s  # [H, C, Dv]
        attn = (qc @ kc.transpose(-1, -2)) * decay_causal  # [H, C, C]
        out[:, sl] = (qc * gc.exp()[:, :, None]) @ s + attn @ v_new
        g_last = gc[:, -1]  # [H]
        k_dec = kc * (g_last[:, None] - gc).exp()[:, :, None]  # [H, C, Dk]
        s = s * g_last.exp()[:, None, None] + k_dec.transpose(-1, -2) @ v_new
    return out[:, :t].transpose(0, 1), s


def _recurrent_one(q, k, v, g, beta, s):
    """One sequence, token by token. Same shapes as _chunk_one."""
    out = torch.empty(q.shape[0], v.shape[1], v.shape[2], dtype=torch.float32, device=q.device)
    for t in range(q.shape[0]):
        s = s * g[t].exp()[:, None, None]  # [H, Dk, Dv]
        pred = torch.einsum("hk,hkv->hv", k[t], s)  # [H, Dv]
        delta = (v[t] - pred) * beta[t][:, None]  # [H, Dv]
        s = s + k[t][:, :, None] * delta[:, None, :]
        out[t] = torch.einsum("hk,hkv->hv", q[t], s)
    return out, s


def _run_varlen(one, q, k, v, g, beta, cu_seqlens, initial_state, scale, use_qk_l2norm, **kw):
    qf, kf, vf, gf, bf = _prep(q, k, v, g, beta, scale, use_qk_l2norm)
    hv, dk, dv = vf.shape[1], qf.shape[-1], vf.shape[-1]
    bounds = [int(x) for x in cu_seqlens.tolist()]
    out = torch.empty(qf.shape[0], hv, dv, dtype=torch.float32, device=q.device)
    finals = torch.empty(len(bounds) - 1, hv, dk, dv, dtype=torch.float32, device=q.device)
    for i in range(len(bounds) - 1):
        lo, hi = bounds[i], bounds[i + 1]
        s0 = _initial(initial_state, i, hv, dk, dv, q.device)
        o, s = one(qf[lo:hi], kf[lo:hi], vf[lo:hi], gf[lo:hi], bf[lo:hi], s0, **kw)
        out[lo:hi] = o
        finals[i] = s
    return out, finals


def chunk_gated_delta_rule_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float | None = None,
    use_qk_l2norm: bool = True,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked (WY / UT-transform) gated delta rule over packed varlen sequences, fp32.

    q, k [T, Hk, Dk]; v [T, Hv, Dv]; g (log-decay), beta [T, Hv]; cu_seqlens [B+1];
    initial_state [B, Hv, Dk, Dv] or None (zeros). Returns o [T, Hv, Dv] fp32 and
    final_state [B, Hv, Dk, Dv] fp32.
    """
    return _run_varlen(
        _chunk_one, q, k, v, g, beta, cu_seqlens, initial_state, scale, use_qk_l2norm, chunk_size=chunk_size
    )


def recurrent_gated_delta_rule_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float | None = None,
    use_qk_l2norm: bool = True,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token gated delta rule; same contract as chunk_gated_delta_rule_ref (chunk_size unused)."""
    del chunk_size
    return _run_varlen(_recurrent_one, q, k, v, g, beta, cu_seqlens, initial_state, scale, use_qk_l2norm)


# ----------------------------------------------------------------------------------------------
# Pool-level functions (same signatures as the Triton versions).


def read_state(state: torch.Tensor, slot: int, state_layout: str) -> torch.Tensor:
    """Pool slot -> fp32 [Hv, Dk, Dv] (a copy)."""
    s = state[slot].float()
    return (s if state_layout == "kv" else s.transpose(-1, -2)).clone()


def write_state(state: torch.Tensor, slot: int, s: torch.Tensor, state_layout: str) -> None:
    """fp32 [Hv, Dk, Dv] -> pool slot, in place, cast to the pool dtype."""
    state[slot].copy_(s if state_layout == "kv" else s.transpose(-1, -2))


def gdn_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor,
    state: torch.Tensor,
    state_slots: torch.Tensor,
    has_initial_state: torch.Tensor,
    state_layout: str = "kv",
    scale: float | None = None,
) -> torch.Tensor:
    """Varlen GDN prefill through a state pool (reference).

    q, k [T, Hk, Dk]; v [T, Hv, Dv]; a, b [T, Hv]; A_log, dt_bias [Hv]; cu_seqlens [B+1];
    state [S, Hv, Dk, Dv] ("kv") or [S, Hv, Dv, Dk] ("vk"); state_slots [B] (negative = no pool state:
    the sequence starts from zero and its final state is not written); has_initial_state [B].
    Returns o [T, Hv, Dv] in q.dtype; final states written to state[state_slots[b]].
    """
    n, _, hv, dk, dv = checks.check_prefill(
        q, k, v, a, b, A_log, dt_bias, cu_seqlens, state, state_slots, has_initial_state, state_layout
    )
    g, beta = gdn_gating(a, b, A_log, dt_bias)
    slots = host_slots(state_slots, state.shape[0])
    init_flags = [bool(x) for x in has_initial_state.tolist()]
    s0 = torch.zeros(n, hv, dk, dv, dtype=torch.float32, device=q.device)
    for i in range(n):
        if init_flags[i] and slots[i] >= 0:
            s0[i] = read_state(state, slots[i], state_layout)
    o, finals = chunk_gated_delta_rule_ref(
        q, k, v, g, beta, cu_seqlens=cu_seqlens, initial_state=s0, scale=scale
    )
    for i in range(n):
        if slots[i] >= 0:
            write_state(state, slots[i], finals[i], state_layout)
    return o.to(q.dtype)


def gdn_decode_multi(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    *,
    state: torch.Tensor,
    state_slots: torch.Tensor,
    intermediate_states: torch.Tensor | None = None,
    state_layout: str = "kv",
    scale: float | None = None,
) -> torch.Tensor:
    """T tokens per sequence (speculative verification), reference.

    q, k [B, T, Hk, Dk]; v [B, T, Hv, Dv]; a, b [B, T, Hv]; state pool as in gdn_prefill;
    state_slots [B] (negative = padding: output zeros, nothing written);
    intermediate_states [B, T, Hv, Dk, Dv] / [B, T, Hv, Dv, Dk] or None: state after each step.
    Returns o [B, T, Hv, Dv] in q.dtype; final state written to the pool.
    """
    nb, _, hv, dk, dv = checks.check_decode(
        q, k, v, a, b, A_log, dt_bias, state, state_slots, state_layout, 2, intermediate_states
    )
    t = q.shape[1]
    g, beta = gdn_gating(a, b, A_log, dt_bias)  # [B, T, Hv]
    out = torch.zeros(nb, t, hv, dv, dtype=q.dtype, device=q.device)
    for i, slot in enumerate(host_slots(state_slots, state.shape[0])):
        if slot < 0:
            continue
        qf, kf, vf, gf, bf = _prep(q[i], k[i], v[i], g[i], beta[i], scale, True)
        s = read_state(state, slot, state_layout)
        for j in range(t):
            o, s = _recurrent_one(
                qf[j : j + 1], kf[j : j + 1], vf[j : j + 1], gf[j : j + 1], bf[j : j + 1], s
            )
            out[i, j] = o[0].to(q.dtype)
            if intermediate_states is not None:
                ss = s if state_layout == "kv" else s.transpose(-1, -2)
                intermediate_states[i, j].copy_(ss)
        write_state(state, slot, s, state_layout)
    return out


def gdn_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    *,
    state: torch.Tensor,
    state_slots: torch.Tensor,
    state_layout: str = "kv",
    scale: float | None = None,
) -> torch.Tensor:
    """One token per sequence, reference.

    q, k [B, Hk, Dk]; v [B, Hv, Dv]; a, b [B, Hv]; state pool as in gdn_prefill; state_slots [B]
    (negative = padding: output row zeros, nothing written). Returns o [B, Hv, Dv] in q.dtype.
    """
    checks.check_decode(q, k, v, a, b, A_log, dt_bias, state, state_slots, state_layout, 1)
    out = gdn_decode_multi(
        q[:, None],
        k[:, None],
        v[:, None],
        a[:, None],
        b[:, None],
        A_log,
        dt_bias,
        state=state,
        state_slots=state_slots,
        state_layout=state_layout,
        scale=scale,
    )
    return out[:, 0]
