"""CPU tests of the reference causal conv1d against F.conv1d per sequence, on both pool layouts."""

import pytest
import torch
import torch.nn.functional as F

from deltaserve.ops.conv1d import causal_conv1d_decode, causal_conv1d_decode_multi, causal_conv1d_prefill


def _pool(layout: str, s: int, d: int, w: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (storage, logical [S, D, W-1] view) for a layout."""
    if layout == "sglang":
        store = torch.randn(s, d, w - 1, generator=g)
        return store, store
    if layout == "vllm":
        store = torch.randn(s, w - 1, d, generator=g)
        return store, store.transpose(1, 2)
    store = torch.randn(3, s, w - 1, d, generator=g)  # [L, S, W-1, D], use layer 1
    return store, store[1].transpose(1, 2)


def _naive(x_seq, hist, weight, bias, act):
    """x_seq [L, D], hist [D, W-1] -> [L, D] via F.conv1d with W-1 padding on [hist | x]."""
    d, w = weight.shape
    full = torch.cat([hist, x_seq.t()], dim=1)[None]  # [1, D, W-1+L]
    y = F.conv1d(full, weight[:, None, :], bias, padding=w - 1, groups=d)[0]  # [D, 2(W-1)+L]
    y = y[:, : full.shape[-1]][:, w - 1 :]  # HF keeps the first W-1+L; then the x positions
    return (F.silu(y) if act else y).t()


@pytest.mark.parametrize("layout", ["sglang", "vllm", "layer_view"])
@pytest.mark.parametrize("w", [2, 3, 4])
def test_prefill_varlen(layout, w):
    g = torch.Generator().manual_seed(w)
    d, s = 12, 7
    lens = [1, 0, 5, 2, 9, 1]
    slots = torch.tensor([3, 0, 5, -1, 1, 6])
    has_init = torch.tensor([True, True, False, True, True, True])
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist())
    x = torch.randn(int(cu[-1]), d, generator=g)
    weight = torch.randn(d, w, generator=g)
    bias = torch.randn(d, generator=g)
    store, pool = _pool(layout, s, d, w, g)
    before = pool.clone()
    out = causal_conv1d_prefill(
        x, weight, bias, cu_seqlens=cu, conv_state=pool, state_slots=slots, has_initial_state=has_init
    )
    assert out.shape == x.shape
    touched = set()
    for b in range(len(lens)):
        xs = x[int(cu[b]) : int(cu[b + 1])]
        slot = int(slots[b])
        hist = before[slot] if (slot >= 0 and has_init[b]) else torch.zeros(d, w - 1)
        torch.testing.assert_close(out[int(cu[b]) : int(cu[b + 1])], _naive(xs, hist, weight, bias, True))
        if slot >= 0:
            expect = torch.cat([hist, xs.t()], dim=1)[:, -(w - 1) :]
            torch.testing.assert_close(pool[slot], expect)
            touched.add(slot)
    for slot in range(s):
        if slot not in touched:
            assert torch.equal(pool[slot], before[slot])


def test_prefill_matches_hf_formula_no_state():
    g = torch.Generator().manual_seed(9)
    d, w, n = 8, 4, 13
    x = torch.randn(n, d, generator=g)
    weight = torch.randn(d, w, generator=g)
    pool = torch.zeros(1, d, w - 1)
    out = causal_conv1d_prefill(
        x,
        weight,
        None,
        cu_seqlens=torch.tensor([0, n]),
        conv_state=pool,
        state_slots=torch.tensor([-1]),
        has_initial_state=torch.tensor([False]),
        activation=None,
    )
    hf = F.conv1d(x.t()[None], weight[:, None, :], None, padding=w - 1, groups=d)[0, :, :n].t()
    torch.testing.assert_close(out, hf)


@pytest.mark.parametrize("layout", ["sglang", "vllm", "layer_view"])
@pytest.mark.parametrize("w", [2, 4])
def test_decode_equals_prefill_steps(layout, w):
    g = torch.Generator().manual_seed(10 + w)
    d, s = 16, 5
    slots = torch.tensor([2, -1, 0, 4])
    x = torch.randn(4, d, generator=g)
    weight = torch.randn(d, w, generator=g)
    bias = torch.randn(d, generator=g)
    _, pool = _pool(layout, s, d, w, g)
    before = pool.clone()
    out = causal_conv1d_decode(x, weight, bias, conv_state=pool, state_slots=slots, activation="silu")
    for b in range(4):
        slot = int(slots[b])
        if slot < 0:
            assert torch.equal(out[b], torch.zeros(d))
            continue
        torch.testing.assert_close(out[b : b + 1], _naive(x[b : b + 1], before[slot], weight, bias, True))
        torch.testing.assert_close(pool[slot], torch.cat([before[slot], x[b, :, None]], 1)[:, 1:])
    for slot in (1, 3):
        assert torch.equal(pool[slot], before[slot])


def test_decode_multi_equals_repeated_decode():
    g = torch.Generator().manual_seed(20)
    d, w, s, t = 8, 4, 4, 3
    x = torch.randn(3, t, d, generator=g)
    weight = torch.randn(d, w, generator=g)
    slots = torch.tensor([1, -1, 3])
    pool_a = torch.randn(s, d, w - 1, generator=g)
    pool_b = pool_a.clone()
    out = causal_conv1d_decode_multi(x, weight, None, conv_state=pool_a, state_slots=slots)
    for step in range(t):
        o = causal_conv1d_decode(x[:, step], weight, None, conv_state=pool_b, state_slots=slots)
        torch.testing.assert_close(out[:, step], o)
    torch.testing.assert_close(pool_a, pool_b)


def test_conv1d_errors():
    x = torch.randn(4, 8)
    pool = torch.zeros(2, 8, 3)
    kw = dict(conv_state=pool, state_slots=torch.tensor([0]), has_initial_state=torch.tensor([False]))
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d_prefill(x, torch.randn(8, 5), None, cu_seqlens=torch.tensor([0, 4]), **kw)
    with pytest.raises(ValueError, match="cu_seqlens"):
        causal_conv1d_prefill(x, torch.randn(8, 4), None, cu_seqlens=torch.tensor([0, 3]), **kw)
    with pytest.raises(ValueError, match="conv_state"):
        causal_conv1d_decode(x, torch.randn(8, 3), None, conv_state=pool, state_slots=torch.zeros(4).long())
    with pytest.raises(ValueError, match="state_slots"):
        causal_conv1d_decode(
            x, torch.randn(8, 4), None, conv_state=pool, state_slots=torch.tensor([0, 1, 2, 5])
        )
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_decode(
            x, torch.randn(8, 4), None, conv_state=pool, state_slots=torch.zeros(4).long(), activation="gelu"
        )
