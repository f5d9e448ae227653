"""CPU tests of the attention reference against a naive per-sequence SDPA oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deltaserve.ops import attention
from deltaserve.ops.attention import reference
from deltaserve.ops.attention.testing import PagedCase, make_paged_case


def sdpa_oracle(case: PagedCase) -> torch.Tensor:
    """fp64 SDPA per sequence on the contiguous context, bottom-right causal mask; [T, Hq, D]."""
    hq = case.q.shape[1]
    out = torch.zeros(case.q.shape, dtype=torch.float64)
    cu = case.cu_seqlens_q.tolist()
    for b, (ql, sl) in enumerate(zip(case.q_lens, case.seq_lens_list)):
        if ql == 0:
            continue
        q = case.q[cu[b] : cu[b + 1]].double().transpose(0, 1)  # [Hq, ql, D]
        group = hq // case.keys[b].shape[1]
        k = case.keys[b].double().repeat_interleave(group, 1).transpose(0, 1)  # [Hq, L, D]
        v = case.values[b].double().repeat_interleave(group, 1).transpose(0, 1)  # [Hq, L, D]
        if ql == sl:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=case.scale)
        else:
            qpos = torch.arange(sl - ql, sl)[:, None]
            mask = torch.arange(sl)[None, :] <= qpos  # [ql, L]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=case.scale)
        out[cu[b] : cu[b + 1]] = o.transpose(0, 1)
    if case.gate is not None:
        out *= torch.sigmoid(case.gate.double())
    return out


def run_paged(case: PagedCase, **kw) -> torch.Tensor:
    return attention.paged_attention(
        case.q,
        case.k_cache,
        case.v_cache,
        block_tables=case.block_tables,
        cu_seqlens_q=case.cu_seqlens_q,
        seq_lens=case.seq_lens,
        scale=case.scale,
        gate=case.gate,
        **kw,
    )


# (q_lens, seq_lens): decode, chunked prefill after a prefix, empty prefix, q_len 0, lengths around pages.
BATCHES = [
    ([1, 1, 1, 1], [1, 17, 64, 65]),
    ([5, 0, 70, 1, 3], [5, 10, 130, 64, 63]),
    ([33], [33]),
    ([0, 2], [4, 129]),
]


@pytest.mark.parametrize("block_size", [1, 16, 64])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("gate", [True, False])
def test_paged_attention_matches_sdpa(block_size: int, batch: tuple, gate: bool) -> None:
    case = make_paged_case(*batch, hq=4, hkv=2, d=16, block_size=block_size, gate=gate, pad_rows=2)
    out = run_paged(case)
    assert out.dtype == case.q.dtype and out.shape == case.q.shape
    n = case.cu_seqlens_q[-1]
    torch.testing.assert_close(out[:n].double(), sdpa_oracle(case)[:n], rtol=1e-5, atol=1e-5)
    assert torch.all(out[n:] == 0)


@pytest.mark.parametrize("hq,hkv", [(8, 1), (4, 4), (16, 2)])
def test_paged_attention_gqa_groups(hq: int, hkv: int) -> None:
    case = make_paged_case([3, 1], [40, 7], hq=hq, hkv=hkv, d=8, block_size=16, seed=1, interleaved_kv=True)
    torch.testing.assert_close(run_paged(case).double(), sdpa_oracle(case), rtol=1e-5, atol=1e-5)


def test_paged_attention_bf16() -> None:
    case = make_paged_case([4, 1], [20, 9], hq=4, hkv=2, d=32, block_size=16, dtype=torch.bfloat16, seed=2)
    out = run_paged(case)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), sdpa_oracle(case), rtol=2e-2, atol=2e-2)


def test_write_kv_cache_strided_and_skips_padding() -> None:
    gen = torch.Generator().manual_seed(3)
    pool = torch.randn(5, 16, 2, 2, 8, generator=gen)  # [NB, BS, K/V, Hkv, D]
    before = pool.clone()
    k_cache, v_cache = pool[:, :, 0], pool[:, :, 1]
    k, v = torch.randn(4, 2, 8, generator=gen), torch.randn(4, 2, 8, generator=gen)
    slots = torch.tensor([3 * 16 + 5, -1, 0, 4 * 16 + 15])
    attention.write_kv_cache(k, v, k_cache, v_cache, slots)
    expect = before.clone()
    for i, s in enumerate(slots.tolist()):
        if s >= 0:
            expect[s // 16, s % 16, 0], expect[s // 16, s % 16, 1] = k[i], v[i]
    assert torch.equal(pool, expect)


def test_write_then_attend_equals_causal_attention() -> None:
    """Prefill writes K/V through slot_mapping, then paged attention == contiguous causal attention."""
    gen = torch.Generator().manual_seed(4)
    lens, bs, hq, hkv, d = [7, 1, 20], 4, 4, 2, 8
    t = sum(lens)
    q, gate = torch.randn(t, hq, d, generator=gen), torch.randn(t, hq, d, generator=gen)
    k, v = torch.randn(t, hkv, d, generator=gen), torch.randn(t, hkv, d, generator=gen)
    k_cache, v_cache = torch.zeros(12, bs, hkv, d), torch.zeros(12, bs, hkv, d)
    tables = torch.tensor([[11, 3, 0, 0, 0], [5, 0, 0, 0, 0], [1, 2, 4, 6, 7]], dtype=torch.int32)
    slots = torch.cat(
        [tables[b, torch.arange(n) // bs] * bs + torch.arange(n) % bs for b, n in enumerate(lens)]
    )
    attention.write_kv_cache(k, v, k_cache, v_cache, slots)
    cu = torch.tensor([0, 7, 8, 28], dtype=torch.int32)
    kw = dict(cu_seqlens_q=cu, seq_lens=torch.tensor(lens), scale=0.3, gate=gate)
    out = attention.paged_attention(q, k_cache, v_cache, block_tables=tables, **kw)
    want = attention.causal_attention(q, k, v, cu_seqlens=cu, scale=0.3, gate=gate)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)


def test_causal_attention_matches_sdpa() -> None:
    gen = torch.Generator().manual_seed(5)
    cu = torch.tensor([0, 1, 9, 9, 30])
    q, k, v = (torch.randn(30, h, 16, generator=gen) for h in (6, 3, 3))
    out = attention.causal_attention(q, k, v, cu_seqlens=cu, scale=0.25)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if e > s:
            args = [x[s:e].transpose(0, 1) for x in (q, k, v)]
            want = F.scaled_dot_product_attention(*args, is_causal=True, scale=0.25, enable_gqa=True)
            torch.testing.assert_close(out[s:e], want.transpose(0, 1), rtol=1e-5, atol=1e-5)


def _bad(case: PagedCase, **override) -> dict:
    kw = dict(
        block_tables=case.block_tables,
        cu_seqlens_q=case.cu_seqlens_q,
        seq_lens=case.seq_lens,
        scale=case.scale,
        gate=case.gate,
    )
    kw.update(override)
    return kw


def test_edge_errors_name_the_argument() -> None:
    c = make_paged_case([2, 1], [5, 3], hq=4, hkv=2, d=8, block_size=4)
    q, kc, vc = c.q, c.k_cache, c.v_cache
    cases = [
        ((q[..., :4], kc, vc), {}, "q"),
        ((q[:, :3], kc, vc), {}, "q heads"),
        ((q, kc, vc[..., :4]), {}, "v_cache"),
        ((q, kc[0], vc[0]), {}, "k_cache"),
        ((q, kc, vc), {"block_tables": c.block_tables.float()}, "block_tables"),
        ((q, kc, vc), {"cu_seqlens_q": c.cu_seqlens_q[:2]}, "cu_seqlens_q"),
        ((q, kc, vc), {"cu_seqlens_q": torch.tensor([0, 3, 2])}, "cu_seqlens_q"),
        ((q, kc, vc), {"seq_lens": c.seq_lens[:1]}, "seq_lens"),
        ((q, kc, vc), {"seq_lens": torch.tensor([1, 3])}, "seq_lens"),
        ((q, kc, vc), {"seq_lens": torch.tensor([50, 3])}, "seq_lens"),
        ((q, kc, vc), {"gate": q[:1]}, "gate"),
        ((q, kc, vc), {"block_tables": c.block_tables + kc.shape[0]}, r"block_tables\[0\] has page ids"),
    ]
    for args, override, name in cases:
        with pytest.raises(ValueError, match=name):
            attention.paged_attention(*args, **_bad(c, **override))
    k = torch.zeros(3, 2, 8)
    with pytest.raises(ValueError, match="slot_mapping"):
        attention.write_kv_cache(k, k, kc, vc, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="slot_mapping"):
        attention.write_kv_cache(k, k, kc, vc, torch.tensor([0, 1, 10**6]))
    with pytest.raises(ValueError, match="k must"):
        attention.write_kv_cache(k[..., :4], k[..., :4], kc, vc, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="cu_seqlens"):
        reference.causal_attention(q, q[:, :2], q[:, :2], cu_seqlens=torch.tensor([0, 99]), scale=1.0)


def test_fp8_cache_roundtrip_with_scales() -> None:
    """write_kv_cache quantises with k/v scales; paged_attention dequantises them back."""
    gen = torch.Generator().manual_seed(6)
    lens, bs, hq, hkv, d, ks, vs = [5, 12], 4, 4, 2, 16, 0.02, 0.5
    t = sum(lens)
    q, k, v = (torch.randn(t, h, d, generator=gen) for h in (hq, hkv, hkv))
    k = k * 3.0
    fp8 = torch.float8_e4m3fn
    k_cache = torch.zeros(8, bs, hkv, d, dtype=fp8)
    v_cache = torch.zeros(8, bs, hkv, d, dtype=fp8)
    tables = torch.tensor([[7, 2, 0], [1, 3, 5]], dtype=torch.int32)
    slots = torch.cat(
        [tables[b, torch.arange(n) // bs] * bs + torch.arange(n) % bs for b, n in enumerate(lens)]
    )
    attention.write_kv_cache(k, v, k_cache, v_cache, slots, k_scale=ks, v_scale=vs)
    assert torch.equal(k_cache[7, 1].float(), (k[1] / ks).to(fp8).float())
    cu = torch.tensor([0, 5, 17], dtype=torch.int32)
    out = attention.paged_attention(
        q, k_cache, v_cache, block_tables=tables, cu_seqlens_q=cu, seq_lens=torch.tensor(lens), scale=0.25,
        k_scale=ks, v_scale=vs,
    )  # fmt: skip
    kq, vq = (k / ks).to(fp8).float() * ks, (v / vs).to(fp8).float() * vs
    want = attention.causal_attention(q, kq, vq, cu_seqlens=cu, scale=0.25)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    # the scales are applied: reading the same cache without them gives a different answer
    raw = attention.paged_attention(
        q, k_cache, v_cache, block_tables=tables, cu_seqlens_q=cu, seq_lens=torch.tensor(lens), scale=0.25
    )
    assert (raw - out).abs().max() > 0.5
