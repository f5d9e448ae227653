"""CPU tests of the GDN reference ops (deltaserve/ops/gdn/reference.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deltaserve.ops import gdn
from deltaserve.ops.gdn import reference as ref


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return ((x.double() - y.double()).norm() / y.double().norm().clamp_min(1e-30)).item()


def _inputs(t: int, hk: int, hv: int, dk: int, dv: int, gen: torch.Generator, dtype=torch.float32):
    q = torch.randn(t, hk, dk, generator=gen).to(dtype)
    k = torch.randn(t, hk, dk, generator=gen).to(dtype)
    v = torch.randn(t, hv, dv, generator=gen).to(dtype)
    a = torch.randn(t, hv, generator=gen).to(dtype)
    b = torch.randn(t, hv, generator=gen).to(dtype)
    A_log = torch.rand(hv, generator=gen) * 2.0 - 1.0
    dt_bias = torch.randn(hv, generator=gen) * 0.5
    return q, k, v, a, b, A_log, dt_bias


def test_gating_matches_formula():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(7, 4, generator=gen) * 15.0  # crosses the softplus threshold (20)
    b = torch.randn(7, 4, generator=gen)
    A_log, dt_bias = torch.randn(4, generator=gen), torch.randn(4, generator=gen) * 10.0
    g, beta = ref.gdn_gating(a.bfloat16(), b.bfloat16(), A_log, dt_bias)
    x = a.bfloat16().double() + dt_bias.double()
    sp = torch.where(x > 20, x, torch.log1p(torch.exp(x)))
    assert g.dtype == torch.float32 and beta.dtype == torch.float32
    assert _rel(g, -torch.exp(A_log.double()) * sp) < 1e-6
    assert _rel(beta, torch.sigmoid(b.bfloat16().double())) < 1e-6


@pytest.mark.parametrize("hk,hv", [(2, 2), (2, 4), (1, 3)])
def test_chunk_matches_recurrent_varlen(hk: int, hv: int):
    gen = torch.Generator().manual_seed(hk * 10 + hv)
    lens = [1, 63, 64, 65, 130]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    t = int(cu[-1])
    q, k, v, a, b, A_log, dt_bias = _inputs(t, hk, hv, 16, 8, gen)
    g, beta = ref.gdn_gating(a, b, A_log, dt_bias)
    h0 = torch.randn(len(lens), hv, 16, 8, generator=gen)
    o_c, s_c = ref.chunk_gated_delta_rule_ref(q, k, v, g, beta, cu_seqlens=cu, initial_state=h0)
    o_r, s_r = ref.recurrent_gated_delta_rule_ref(q, k, v, g, beta, cu_seqlens=cu, initial_state=h0)
    assert o_c.shape == (t, hv, 8) and s_c.shape == (len(lens), hv, 16, 8)
    assert _rel(o_c, o_r) < 1e-5
    assert _rel(s_c, s_r) < 1e-5
    # chunk size does not change the function
    o_16, s_16 = ref.chunk_gated_delta_rule_ref(
        q, k, v, g, beta, cu_seqlens=cu, initial_state=h0, chunk_size=16
    )
    assert _rel(o_16, o_r) < 1e-5 and _rel(s_16, s_r) < 1e-5


def test_recurrent_matches_transformers_oracle():
    mod = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
    gen = torch.Generator().manual_seed(3)
    t, hk, hv, dk, dv = 70, 2, 4, 16, 8
    q, k, v, a, b, A_log, dt_bias = _inputs(t, hk, hv, dk, dv, gen)
    g, beta = ref.gdn_gating(a, b, A_log, dt_bias)
    h0 = torch.randn(1, hv, dk, dv, generator=gen)
    cu = torch.tensor([0, t])
    o, s = ref.chunk_gated_delta_rule_ref(q, k, v, g, beta, cu_seqlens=cu, initial_state=h0)
    qq, kk = q.repeat_interleave(hv // hk, 1), k.repeat_interleave(hv // hk, 1)
    o_hf, s_hf = mod.torch_recurrent_gated_delta_rule(
        qq[None],
        kk[None],
        v[None],
        g[None],
        beta[None],
        initial_state=h0.clone(),
        output_final_state=True,
        use_qk_l2norm_in_kernel=True,
    )
    assert _rel(o, o_hf[0]) < 1e-5
    assert _rel(s, s_hf) < 1e-5


def test_scale_and_no_l2norm():
    gen = torch.Generator().manual_seed(4)
    q, k, v, a, b, A_log, dt_bias = _inputs(20, 1, 1, 8, 8, gen)
    k = F.normalize(k, dim=-1)
    g, beta = ref.gdn_gating(a, b, A_log, dt_bias)
    cu = torch.tensor([0, 20])
    o1, _ = ref.chunk_gated_delta_rule_ref(q, k, v, g, beta, cu_seqlens=cu, scale=0.5, use_qk_l2norm=False)
    o2, _ = ref.recurrent_gated_delta_rule_ref(
        q, k, v, g, beta, cu_seqlens=cu, scale=0.5, use_qk_l2norm=False
    )
    o3, _ = ref.recurrent_gated_delta_rule_ref(
        q, k, v, g, beta, cu_seqlens=cu, scale=1.0, use_qk_l2norm=False
    )
    assert _rel(o1, o2) < 1e-5
    assert _rel(o3 * 0.5, o2) < 1e-5


def _pool(n_layers: int, slots: int, hv: int, dk: int, dv: int, layout: str, dtype, gen):
    """A [L, S, ...] pool; returns the full tensor and a strided view of layer 1 in the given layout."""
    if layout == "kv":
        full = torch.randn(n_layers, slots, hv, dk, dv, generator=gen).to(dtype)
        view = full[1]
    else:
        # [L, S, Hv, Dk, Dv] storage viewed transposed -> "vk" per-head layout that is not contiguous
        full = torch.randn(n_layers, slots, hv, dk, dv, generator=gen).to(dtype)
        view = full[1].transpose(-1, -2)
    return full, view


@pytest.mark.parametrize("layout", ["kv", "vk"])
@pytest.mark.parametrize("sdtype", [torch.float32, torch.bfloat16])
def test_prefill_pool(layout: str, sdtype: torch.dtype):
    gen = torch.Generator().manual_seed(5)
    hk, hv, dk, dv = 1, 2, 16, 8
    lens = [1, 65, 20]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    t = int(cu[-1])
    q, k, v, a, b, A_log, dt_bias = _inputs(t, hk, hv, dk, dv, gen, torch.bfloat16)
    full, pool = _pool(3, 6, hv, dk, dv, layout, sdtype, gen)
    before = full.clone()
    slots = torch.tensor([4, 0, 2])
    has_init = torch.tensor([True, False, True])
    o = gdn.gdn_prefill(
        q,
        k,
        v,
        a,
        b,
        A_log,
        dt_bias,
        cu_seqlens=cu,
        state=pool,
        state_slots=slots,
        has_initial_state=has_init,
        state_layout=layout,
    )
    assert o.dtype == torch.bfloat16 and o.shape == (t, hv, dv)
    g, beta = ref.gdn_gating(a, b, A_log, dt_bias)
    h0 = torch.zeros(3, hv, dk, dv)
    for i in (0, 2):
        h0[i] = before[1, int(slots[i])].float()  # the storage is [Dk, Dv] for both views
    o_r, s_r = ref.recurrent_gated_delta_rule_ref(q, k, v, g, beta, cu_seqlens=cu, initial_state=h0)
    assert _rel(o.float(), o_r) < 1e-2
    for i in range(3):
        got = full[1, int(slots[i])].float()
        tol = 1e-5 if sdtype == torch.float32 else 1e-2
        assert _rel(got, s_r[i]) < tol
    untouched = [s for s in range(6) if s not in slots.tolist()]
    assert torch.equal(full[1, untouched], before[1, untouched])
    assert torch.equal(full[0], before[0]) and torch.equal(full[2], before[2])


@pytest.mark.parametrize("layout", ["kv", "vk"])
def test_decode_and_multi_agree_with_prefill(layout: str):
    gen = torch.Generator().manual_seed(6)
    hk, hv, dk, dv, nb, t = 2, 4, 8, 8, 3, 5
    q, k, v, a, b, A_log, dt_bias = _inputs(nb * t, hk, hv, dk, dv, gen)
    full, pool = _pool(2, 5, hv, dk, dv, layout, torch.float32, gen)
    slots = torch.tensor([3, -1, 1])
    before = full.clone()
    # multi-token decode over [B, T]
    inter = torch.full((nb, t, *pool.shape[1:]), float("nan"))
    o_multi = gdn.gdn_decode_multi(
        q.view(nb, t, hk, dk),
        k.view(nb, t, hk, dk),
        v.view(nb, t, hv, dv),
        a.view(nb, t, hv),
        b.view(nb, t, hv),
        A_log,
        dt_bias,
        state=pool,
        state_slots=slots,
        intermediate_states=inter,
        state_layout=layout,
    )
    after_multi = full.clone()
    # same thing token by token with gdn_decode on a fresh copy of the pool
    full2 = before.clone()
    pool2 = full2[1] if layout == "kv" else full2[1].transpose(-1, -2)
    o_steps = []
    for j in range(t):
        sl = torch.arange(nb) * t + j
        o_steps.append(
            gdn.gdn_decode(
                q[sl],
                k[sl],
                v[sl],
                a[sl],
                b[sl],
                A_log,
                dt_bias,
                state=pool2,
                state_slots=slots,
                state_layout=layout,
            )
        )
    o_steps = torch.stack(o_steps, 1)
    assert _rel(o_multi, o_steps) < 1e-6
    assert torch.allclose(after_multi, full2, atol=1e-6)
    assert torch.equal(o_multi[1], torch.zeros_like(o_multi[1]))  # padding row zeros
    assert torch.isnan(inter[1]).all()  # padding row's intermediate states untouched
    # against prefill with initial states for the valid sequences
    valid = [0, 2]
    full3 = before.clone()
    pool3 = full3[1] if layout == "kv" else full3[1].transpose(-1, -2)
    sel = torch.cat([torch.arange(i * t, (i + 1) * t) for i in valid])
    o_pre = gdn.gdn_prefill(
        q[sel],
        k[sel],
        v[sel],
        a[sel],
        b[sel],
        A_log,
        dt_bias,
        cu_seqlens=torch.tensor([0, t, 2 * t]),
        state=pool3,
        state_slots=slots[valid],
        has_initial_state=torch.tensor([True, True]),
        state_layout=layout,
    )
    assert _rel(o_multi[valid].reshape(-1, hv, dv), o_pre) < 1e-5
    assert torch.allclose(full3, after_multi, atol=1e-5)
    # the last intermediate state equals the final pool state
    for i in valid:
        assert torch.allclose(inter[i, -1], pool[int(slots[i])], atol=1e-6)
    untouched = [0, 2, 4]
    assert torch.equal(full[:, untouched], before[:, untouched]) and torch.equal(full[0], before[0])


def test_edge_checks_name_the_argument():
    gen = torch.Generator().manual_seed(7)
    q, k, v, a, b, A_log, dt_bias = _inputs(4, 2, 3, 8, 8, gen)
    pool = torch.zeros(2, 3, 8, 8)
    kw = dict(
        cu_seqlens=torch.tensor([0, 4]),
        state=pool,
        state_slots=torch.tensor([0]),
        has_initial_state=torch.tensor([False]),
    )
    with pytest.raises(ValueError, match="^v:"):
        gdn.gdn_prefill(q, k, v, a, b, A_log, dt_bias, **kw)  # Hv=3 not a multiple of Hk=2
    q, k, v, a, b, A_log, dt_bias = _inputs(4, 1, 3, 8, 8, gen)
    with pytest.raises(ValueError, match="^state_layout:"):
        gdn.gdn_prefill(q, k, v, a, b, A_log, dt_bias, state_layout="kvx", **kw)
    with pytest.raises(ValueError, match="^a:"):
        gdn.gdn_prefill(q, k, v, a[:, :2], b, A_log, dt_bias, **kw)
    with pytest.raises(ValueError, match="^cu_seqlens:"):
        gdn.gdn_prefill(q, k, v, a, b, A_log, dt_bias, **{**kw, "cu_seqlens": torch.tensor([0, 3])})
    with pytest.raises(ValueError, match="^state:"):
        gdn.gdn_prefill(q, k, v, a, b, A_log, dt_bias, **{**kw, "state": torch.zeros(2, 3, 8, 4)})
    with pytest.raises(ValueError, match="^has_initial_state:"):
        gdn.gdn_prefill(q, k, v, a, b, A_log, dt_bias, **{**kw, "has_initial_state": torch.tensor([1])})
    with pytest.raises(ValueError, match="^state_slots:"):
        gdn.gdn_decode(
            q, k, v, a, b, A_log, dt_bias, state=pool, state_slots=torch.tensor([0, 1])
        )  # B=4 != 2
    with pytest.raises(ValueError, match="^k:"):
        gdn.gdn_decode(q, k[:, :, :4], v, a, b, A_log, dt_bias, state=pool, state_slots=torch.zeros(4).long())
    with pytest.raises(ValueError, match="^state_slots: slot 2 is out of range for a pool of 2"):
        gdn.gdn_prefill(q, k, v, a, b, A_log, dt_bias, **{**kw, "state_slots": torch.tensor([2])})
    with pytest.raises(ValueError, match="^state_slots: slot 5 is out of range"):
        gdn.gdn_decode(q, k, v, a, b, A_log, dt_bias, state=pool, state_slots=torch.tensor([0, 1, 5, -1]))


@pytest.mark.parametrize("init", [True, False])
def test_prefill_negative_slot_starts_from_zero_and_writes_nothing(init: bool):
    gen = torch.Generator().manual_seed(8)
    hk, hv, dk, dv = 1, 2, 16, 8
    cu = torch.tensor([0, 5, 12])
    q, k, v, a, b, A_log, dt_bias = _inputs(12, hk, hv, dk, dv, gen)
    pool = torch.randn(3, hv, dk, dv, generator=gen)
    before = pool.clone()
    o = gdn.gdn_prefill(
        q, k, v, a, b, A_log, dt_bias, cu_seqlens=cu, state=pool, state_slots=torch.tensor([-1, 1]),
        has_initial_state=torch.tensor([init, False]),
    )  # fmt: skip
    g, beta = ref.gdn_gating(a, b, A_log, dt_bias)
    o_r, s_r = ref.recurrent_gated_delta_rule_ref(q, k, v, g, beta, cu_seqlens=cu)  # both from zero
    assert _rel(o.float(), o_r) < 1e-2
    assert torch.equal(pool[[0, 2]], before[[0, 2]])  # the padding sequence wrote nothing (not slot -1 = 2)
    assert _rel(pool[1], s_r[1]) < 1e-5
