"""GDN Triton kernels vs the fp32 reference (GPU, `pytest -m gpu`) plus a tiny TRITON_INTERPRET run on CPU.

Acceptance (issue 3): bf16 inputs, rel. error < 2e-3 on outputs and < 1e-3 on fp32 final states, for
lengths 1, 63, 64, 65, 1000 and varlen batches with 1-token and 8k-token sequences, both state
layouts, fp32 and bf16 states, Hv/Hk = 1, 2, 3, 4; outputs NaN-poisoned; padding slots untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from deltaserve.ops.gdn import reference as ref

D = 128
OUT_TOL = 2e-3
STATE_TOL = {torch.float32: 1e-3, torch.bfloat16: 6e-3}  # bf16 pool: storage rounding alone is ~2e-3


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return ((x.double() - y.double()).norm() / y.double().norm().clamp_min(1e-30)).item()


def _poison_allocator(*shapes_dtypes) -> None:
    """Fill soon-to-be-reused caching-allocator blocks with NaN so unwritten outputs show up."""
    for shape, dtype in shapes_dtypes:
        torch.full(shape, float("nan"), dtype=dtype, device="cuda")  # freed at once, block is reused


def _inputs(t: int, hk: int, hv: int, gen: torch.Generator, lead: tuple[int, ...] = ()):
    """bf16 q, k, v as column views of one [*, conv_dim] tensor (as in the model), a, b views of [*, 2 Hv]."""
    shape = (*lead, t)
    mixed = torch.randn(*shape, 2 * hk * D + hv * D, generator=gen, device="cuda").bfloat16()
    ba = (torch.randn(*shape, 2 * hv, generator=gen, device="cuda") * 2).bfloat16()
    q = mixed[..., : hk * D].unflatten(-1, (hk, D))
    k = mixed[..., hk * D : 2 * hk * D].unflatten(-1, (hk, D))
    v = mixed[..., 2 * hk * D :].unflatten(-1, (hv, D))
    A_log = torch.empty(hv, device="cuda").uniform_(-2.0, 1.5, generator=gen)
    dt_bias = torch.randn(hv, generator=gen, device="cuda")
    return q, k, v, ba[..., :hv], ba[..., hv:], A_log, dt_bias


def _pool(n_slots: int, hv: int, layout: str, dtype: torch.dtype, gen: torch.Generator, transposed: bool):
    """Layer 1 of a [3, S, Hv, ...] pool: native per-head layout, or a transposed view of the other one."""
    full = (torch.randn(3, n_slots, hv, D, D, generator=gen, device="cuda") * 0.3).to(dtype)
    view = full[1].transpose(-1, -2) if transposed else full[1]
    return full, view


gpu = pytest.mark.gpu


@gpu
@pytest.mark.parametrize(
    "lens",
    [[1], [63], [64], [65], [1000], [1, 8192, 1, 200], [64, 1, 65, 127, 1]],
    ids=lambda x: "x".join(map(str, x)),
)
@pytest.mark.parametrize("layout", ["kv", "vk"])
@pytest.mark.parametrize("sdtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("ratio", [1, 2, 3, 4])
def test_prefill_matches_reference(lens, layout, sdtype, ratio):
    if ratio in (1, 3) and len(lens) == 1 and lens[0] in (63, 65):
        pytest.skip("ratio sweep on the remaining shapes keeps the run short")
    _check_prefill(lens, layout, sdtype, ratio, None)


def _plan_sweep(fn):
    """GPU; varlen batches (with 1-token, 8k-token and empty sequences) x both layouts x fp32 / bf16 pools
    x Hv/Hk 2 and 3: the sweep every alternative scan plan must pass."""
    lens = [[1000], [1, 8192, 1, 200], [64, 1, 65, 127, 1], [3000, 0, 65]]
    fn = pytest.mark.parametrize("ratio", [2, 3])(fn)
    fn = pytest.mark.parametrize("sdtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])(fn)
    fn = pytest.mark.parametrize("layout", ["kv", "vk"])(fn)
    fn = pytest.mark.parametrize("lens", lens, ids=lambda x: "x".join(map(str, x)))(fn)
    return gpu(fn)


@_plan_sweep
@pytest.mark.parametrize("part_chunks", [1, 16])
def test_prefill_in_parts_matches_reference(lens, layout, sdtype, ratio, part_chunks):
    """Sequences split into parts of `part_chunks` chunks scanned side by side (local states and
    transitions, combined in part order, then the outputs): the same acceptance as one pass."""
    if len(lens) == 5 and part_chunks == 16:
        pytest.skip("every sequence of this batch fits one 16-chunk part: the one-pass tests cover it")
    _check_prefill(lens, layout, sdtype, ratio, {"part_chunks": part_chunks})


@_plan_sweep
@pytest.mark.parametrize("segments", [0, 16], ids=["one-pass", "segments"])
@pytest.mark.parametrize("bv", [64, 32], ids=["bv64", "bv32"])
def test_prefill_transposed_scan_matches_reference(lens, layout, sdtype, ratio, segments, bv):
    """The scan on transposed [BV, DK] state tiles (BV 64: wgmma; 32: mma.sync), in one pass and in
    16-chunk segments (the fp32 carry between them): the same acceptance as the default scan."""
    _check_prefill(lens, layout, sdtype, ratio, {"transposed": True, "BV": bv, "segment_chunks": segments})


@_plan_sweep
@pytest.mark.parametrize("config", [{"tma": True}, {"tma": True, "BV": 64}], ids=["tma", "tma-bv64"])
def test_prefill_tma_scan_matches_reference(lens, layout, sdtype, ratio, config):
    """The scan's chunk tiles by TMA (``_use_tma`` takes it for long sequences only) at the plan's column
    tiles and at 64-column ones: the same acceptance as the default scan."""
    _check_prefill(lens, layout, sdtype, ratio, config)


@gpu
@pytest.mark.parametrize(
    "config",
    [
        None,
        {"tma": True},
        {"segment_chunks": 16, "first_segment": 1},
        {"part_chunks": 16},
        {"transposed": True, "BV": 64},
    ],
    ids=["default", "tma", "segments", "parts", "transposed"],
)
def test_prefill_negative_slot_is_padding(config):
    """A sequence on a negative slot (flagged with an initial state) starts from zero and its final state
    reaches no slot, in every scan plan; the other sequences are unaffected."""
    _check_prefill([3000, 1, 700], "kv", torch.float32, 2, config, pad_first=True)


def _check_prefill(lens, layout, sdtype, ratio, config, pad_first: bool = False):
    from deltaserve.ops.gdn.prefill import gdn_prefill

    gen = torch.Generator(device="cuda").manual_seed(sum(lens) * 7 + ratio)
    hk = 2 if ratio != 3 else 1
    hv = hk * ratio
    t = sum(lens)
    nb = len(lens)
    q, k, v, a, b, A_log, dt_bias = _inputs(t, hk, hv, gen)
    full, pool = _pool(nb + 3, hv, layout, sdtype, gen, transposed=(layout == "vk" and ratio == 2))
    before = full.clone()
    slots = torch.randperm(nb + 3, generator=torch.Generator().manual_seed(t))[:nb].to("cuda", torch.int32)
    if pad_first:
        slots[0] = -1
    has_init = torch.arange(nb, device="cuda") % 2 == 0
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    _poison_allocator(((t, hv, D), torch.bfloat16))
    o = gdn_prefill(
        q, k, v, a, b, A_log, dt_bias, cu_seqlens=cu, state=pool, state_slots=slots,
        has_initial_state=has_init, state_layout=layout, _config=config,
    )  # fmt: skip
    torch.cuda.synchronize()
    assert o.shape == (t, hv, D) and o.dtype == torch.bfloat16
    assert torch.isfinite(o).all()
    g, beta = ref.gdn_gating(a, b, A_log, dt_bias)
    h0 = torch.zeros(nb, hv, D, D, device="cuda")
    before_view = before[1].transpose(-1, -2) if (layout == "vk" and ratio == 2) else before[1]
    for i in range(nb):
        if has_init[i] and slots[i] >= 0:
            h0[i] = ref.read_state(before_view, int(slots[i]), layout)
    o_ref, s_ref = ref.chunk_gated_delta_rule_ref(q, k, v, g, beta, cu_seqlens=cu.cpu(), initial_state=h0)
    assert _rel(o, o_ref) < OUT_TOL
    valid = [i for i in range(nb) if slots[i] >= 0]
    finals = torch.stack([ref.read_state(pool, int(slots[i]), layout) for i in valid])
    assert _rel(finals, s_ref[valid]) < STATE_TOL[sdtype]
    others = [s for s in range(nb + 3) if s not in slots.tolist()]
    assert torch.equal(full[1, others], before[1, others])
    assert torch.equal(full[0], before[0]) and torch.equal(full[2], before[2])


@gpu
@pytest.mark.parametrize(
    "layout, sdtype", [("kv", torch.float32), ("vk", torch.bfloat16)], ids=["kv-f32", "vk-bf16"]
)
def test_prefill_pipelined_segments_equal_one_pass(layout, sdtype):
    """The pipelined path (prep on this stream, scans of chunk segments on a side stream, fp32 state
    carried between segments) gives exactly the one-pass result, eagerly and inside a CUDA graph."""
    from deltaserve.ops.gdn.prefill import gdn_prefill

    gen = torch.Generator(device="cuda").manual_seed(21)
    lens = [1, 3000, 0, 65, 1000]
    t, nb = sum(lens), len(lens)
    q, k, v, a, b, A_log, dt_bias = _inputs(t, 2, 4, gen)
    full, pool = _pool(nb + 2, 4, layout, sdtype, gen, transposed=False)
    slots = torch.tensor([5, 0, 2, 6, 3], device="cuda", dtype=torch.int32)
    has_init = torch.tensor([True, True, False, False, True], device="cuda")
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    seg = {"segment_chunks": 8, "first_segment": 3, "part_chunks": 0}

    def run(config, pool_copy):
        return gdn_prefill(
            q, k, v, a, b, A_log, dt_bias, cu_seqlens=cu, state=pool_copy, state_slots=slots,
            has_initial_state=has_init, state_layout=layout, _config=config,
        )  # fmt: skip

    one_pool, seg_pool, graph_pool = pool.clone(), pool.clone(), pool.clone()
    o_one = run({"segment_chunks": 0, "part_chunks": 0}, one_pool)
    o_seg = run(seg, seg_pool)
    torch.cuda.synchronize()
    assert torch.equal(o_one, o_seg) and torch.equal(one_pool, seg_pool)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o_graph = run(seg, graph_pool)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(o_graph, o_one) and torch.equal(graph_pool, one_pool)


@gpu
def test_prefill_in_parts_deterministic_and_in_cuda_graph():
    """The parts path gives the same bits twice and inside a CUDA graph (its buffers are allocated per
    call; the combine adds the parts in order), with an empty sequence keeping its initial state."""
    from deltaserve.ops.gdn.prefill import gdn_prefill

    gen = torch.Generator(device="cuda").manual_seed(23)
    lens = [2000, 0, 1, 700]
    t, nb = sum(lens), len(lens)
    q, k, v, a, b, A_log, dt_bias = _inputs(t, 2, 4, gen)
    full, pool = _pool(nb + 2, 4, "kv", torch.float32, gen, transposed=False)
    slots = torch.tensor([5, 0, 2, 3], device="cuda", dtype=torch.int32)
    has_init = torch.tensor([True, True, False, True], device="cuda")
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device="cuda", dtype=torch.int32)

    def run(pool_copy):
        return gdn_prefill(
            q, k, v, a, b, A_log, dt_bias, cu_seqlens=cu, state=pool_copy, state_slots=slots,
            has_initial_state=has_init, _config={"part_chunks": 4},
        )  # fmt: skip

    pools = [pool.clone() for _ in range(3)]
    o1, o2 = run(pools[0]), run(pools[1])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o3 = run(pools[2])
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(o1, o2) and torch.equal(o1, o3)
    assert torch.equal(pools[0], pools[1]) and torch.equal(pools[0], pools[2])
    assert torch.equal(pools[0][0], pool[0]) and torch.equal(pools[0][1], pool[1])  # empty seq, unused slot


@gpu
def test_prefill_deterministic_and_zero_length_sequence():
    from deltaserve.ops.gdn.prefill import gdn_prefill

    gen = torch.Generator(device="cuda").manual_seed(11)
    lens = [100, 0, 30]
    q, k, v, a, b, A_log, dt_bias = _inputs(130, 2, 4, gen)
    cu = torch.tensor([0, 100, 100, 130], device="cuda")
    pool = torch.randn(4, 4, D, D, generator=gen, device="cuda")
    slots = torch.tensor([2, 0, 3], device="cuda")
    has_init = torch.tensor([True, True, False], device="cuda")
    outs = []
    for _ in range(2):
        p = pool.clone()
        o = gdn_prefill(
            q,
            k,
            v,
            a,
            b,
            A_log,
            dt_bias,
            cu_seqlens=cu,
            state=p,
            state_slots=slots,
            has_initial_state=has_init,
        )
        outs.append((o, p))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert torch.equal(outs[0][1][0], pool[0])  # empty sequence with an initial state keeps it
    assert torch.equal(outs[0][1][1], pool[1])  # unused slot
    assert len(lens) == cu.numel() - 1


def _decode_ref(q, k, v, a, b, A_log, dt_bias, pool, slots, layout):
    """fp32 reference outputs [B, T, Hv, Dv] and final states per valid sequence (kv orientation)."""
    g, beta = ref.gdn_gating(a, b, A_log, dt_bias)  # [B, T, Hv]
    nb, t = q.shape[:2]
    outs = torch.zeros(nb, t, v.shape[-2], D, device="cuda")
    finals, inters = {}, {}
    for i in range(nb):
        s = int(slots[i])
        if s < 0:
            continue
        h0 = ref.read_state(pool, s, layout)[None]
        cu = torch.tensor([0, t])
        o_i, s_i = ref.recurrent_gated_delta_rule_ref(
            q[i], k[i], v[i], g[i], beta[i], cu_seqlens=cu, initial_state=h0
        )
        outs[i] = o_i
        finals[i] = s_i[0]
        steps = []
        for j in range(t):
            _, s_j = ref.recurrent_gated_delta_rule_ref(
                q[i, : j + 1], k[i, : j + 1], v[i, : j + 1], g[i, : j + 1], beta[i, : j + 1],
                cu_seqlens=torch.tensor([0, j + 1]), initial_state=h0,
            )  # fmt: skip
            steps.append(s_j[0])
        inters[i] = torch.stack(steps)
    return outs, finals, inters


@gpu
@pytest.mark.parametrize("nb", [1, 7, 64])
@pytest.mark.parametrize("layout", ["kv", "vk"])
@pytest.mark.parametrize("sdtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("ratio", [1, 2, 3, 4])
@pytest.mark.parametrize(
    "config",
    [
        None,
        (64, 4, True),
        (16, 1, True),
        (64, 4, True, True),
        (16, 1, False, True),
        (64, 4, True, False, True),
        (64, 4, True, True, True),
        (64, 4, True, True, True, True),
    ],
    ids=["default", "mma64", "mma16", "mma64vfast", "vfast16", "mma64swap", "mma64swapvfast", "pair"],
)
def test_decode_matches_reference(nb, layout, sdtype, ratio, config):
    """`config` with a true third entry: the tensor-core reduction kernel (bf16 pools; fp32 pools fall
    back to the plain kernel); a true fourth: the V_FAST grid (a head's column tiles back to back); a true
    fifth: the MMA with the state tile as its left operand; a true sixth: two column tiles per MMA program."""
    from deltaserve.ops.gdn.decode import gdn_decode

    gen = torch.Generator(device="cuda").manual_seed(nb * 13 + ratio)
    hk = 2 if ratio != 3 else 1
    hv = hk * ratio
    q, k, v, a, b, A_log, dt_bias = _inputs(1, hk, hv, gen, lead=(nb,))
    q, k, v, a, b = (x[:, 0] for x in (q, k, v, a, b))
    n_slots = nb + 4
    full, pool = _pool(n_slots, hv, layout, sdtype, gen, transposed=(ratio == 4))
    before = full.clone()
    before_view = before[1].transpose(-1, -2) if ratio == 4 else before[1]
    slots = torch.randperm(n_slots, generator=torch.Generator().manual_seed(nb))[:nb].to("cuda")
    if nb > 1:
        slots[1] = -1  # padding row
    _poison_allocator(((nb, 1, hv, D), torch.bfloat16))
    o = gdn_decode(
        q, k, v, a, b, A_log, dt_bias, state=pool, state_slots=slots, state_layout=layout, _config=config
    )
    torch.cuda.synchronize()
    assert o.shape == (nb, hv, D) and torch.isfinite(o).all()
    o_ref, finals, _ = _decode_ref(
        q[:, None], k[:, None], v[:, None], a[:, None], b[:, None], A_log, dt_bias, before_view, slots, layout
    )
    valid = [i for i in range(nb) if int(slots[i]) >= 0]
    assert _rel(o[valid], o_ref[valid, 0]) < OUT_TOL
    if nb > 1:
        assert torch.equal(o[1], torch.zeros_like(o[1]))
    got = torch.stack([ref.read_state(pool, int(slots[i]), layout) for i in valid])
    want = torch.stack([finals[i] for i in valid])
    assert _rel(got, want) < STATE_TOL[sdtype]
    untouched = [s for s in range(n_slots) if s not in slots.tolist()]
    assert torch.equal(full[1, untouched], before[1, untouched])
    assert torch.equal(full[0], before[0]) and torch.equal(full[2], before[2])


@gpu
@pytest.mark.parametrize("layout", ["kv", "vk"])
@pytest.mark.parametrize("sdtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_decode_multi_with_intermediate_states(layout, sdtype):
    from deltaserve.ops.gdn.decode import gdn_decode_multi

    gen = torch.Generator(device="cuda").manual_seed(21)
    nb, t, hk, hv = 5, 4, 2, 4
    q, k, v, a, b, A_log, dt_bias = _inputs(t, hk, hv, gen, lead=(nb,))
    full, pool = _pool(8, hv, layout, sdtype, gen, transposed=False)
    before = full.clone()
    slots = torch.tensor([6, 0, -1, 3, 5], device="cuda")
    inter = torch.full((nb, t, *pool.shape[1:]), float("nan"), device="cuda", dtype=sdtype)
    _poison_allocator(((nb, t, hv, D), torch.bfloat16))
    o = gdn_decode_multi(
        q, k, v, a, b, A_log, dt_bias, state=pool, state_slots=slots, intermediate_states=inter,
        state_layout=layout,
    )  # fmt: skip
    torch.cuda.synchronize()
    o_ref, finals, inters = _decode_ref(q, k, v, a, b, A_log, dt_bias, before[1], slots, layout)
    valid = [0, 1, 3, 4]
    assert torch.isfinite(o).all() and torch.equal(o[2], torch.zeros_like(o[2]))
    assert _rel(o[valid], o_ref[valid]) < OUT_TOL
    got = torch.stack([ref.read_state(pool, int(slots[i]), layout) for i in valid])
    assert _rel(got, torch.stack([finals[i] for i in valid])) < STATE_TOL[sdtype]
    inter_kv = inter if layout == "kv" else inter.transpose(-1, -2)
    assert _rel(inter_kv[valid].float(), torch.stack([inters[i] for i in valid])) < STATE_TOL[sdtype]
    assert torch.isnan(inter[2]).all()
    untouched = [1, 2, 4, 7]
    assert torch.equal(full[1, untouched], before[1, untouched])


@gpu
def test_decode_in_cuda_graph():
    from deltaserve.ops.gdn.decode import gdn_decode

    gen = torch.Generator(device="cuda").manual_seed(5)
    nb, hk, hv = 3, 2, 4
    q, k, v, a, b, A_log, dt_bias = _inputs(1, hk, hv, gen, lead=(nb,))
    q, k, v, a, b = (x[:, 0] for x in (q, k, v, a, b))
    pool = torch.randn(4, hv, D, D, generator=gen, device="cuda")
    slots = torch.tensor([2, -1, 0], device="cuda")
    eager_pool = pool.clone()
    o_eager = gdn_decode(q, k, v, a, b, A_log, dt_bias, state=eager_pool, state_slots=slots)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    warm = pool.clone()
    with torch.cuda.stream(s):
        gdn_decode(q, k, v, a, b, A_log, dt_bias, state=warm, state_slots=slots)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o_graph = gdn_decode(q, k, v, a, b, A_log, dt_bias, state=pool, state_slots=slots)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(o_graph, o_eager) and torch.equal(pool, eager_pool)


_INTERPRET_SCRIPT = textwrap.dedent(
    """
    import torch
    from deltaserve.ops.gdn import decode, prefill, reference as ref

    def rel(x, y):
        return ((x.double() - y.double()).norm() / y.double().norm()).item()

    torch.manual_seed(0)
    # prefill: fp16 inputs (the interpreter's numpy dot has no bf16), 3 sequences, GVA 2, both layouts
    lens, hk, hv, dk, dv = [1, 70, 5], 1, 2, 64, 16
    cu = torch.tensor([0, 1, 71, 76]); t = 76
    q, k = torch.randn(t, hk, dk).half(), torch.randn(t, hk, dk).half()
    v, a, b = torch.randn(t, hv, dv).half(), torch.randn(t, hv).half(), torch.randn(t, hv).half()
    A_log, dt = torch.rand(hv), torch.randn(hv)
    g, beta = ref.gdn_gating(a, b, A_log, dt)
    for layout in ("vk",):
        full = torch.randn(2, 5, hv, dk, dv)
        pool = full[1] if layout == "kv" else full[1].transpose(-1, -2)
        before = full.clone()
        slots, init = torch.tensor([4, 0, 2]), torch.tensor([True, False, True])
        o = prefill.gdn_prefill(q, k, v, a, b, A_log, dt, cu_seqlens=cu, state=pool, state_slots=slots,
                                has_initial_state=init, state_layout=layout)
        h0 = torch.stack([before[1, int(s)] * bool(i) for s, i in zip(slots, init)])
        o_r, s_r = ref.recurrent_gated_delta_rule_ref(q, k, v, g, beta, cu_seqlens=cu, initial_state=h0)
        assert rel(o.float(), o_r) < 2e-3, rel(o.float(), o_r)
        assert rel(full[1, slots], s_r) < 1e-3, rel(full[1, slots], s_r)
        assert torch.equal(full[1, [1, 3]], before[1, [1, 3]]) and torch.equal(full[0], before[0])
    def pool_run(q, k, v, a, b, A_log, cu, slots, init, config, layout="kv"):
        # into a fresh [5, ...] pool: slot 3 takes an empty sequence without initial state, slot 1 none
        g, beta = ref.gdn_gating(a, b, A_log, dt)
        vk = layout == "vk"
        full = torch.randn(5, hv, *((v.shape[-1], dk) if vk else (dk, v.shape[-1])))  # "vk": [Dv, Dk] per head
        before = full.clone()
        o = prefill.gdn_prefill(q, k, v, a, b, A_log, dt, cu_seqlens=cu, state=full, state_slots=slots,
                                has_initial_state=init.bool(), state_layout=layout, _config=config)
        logical = lambda x: x.transpose(-1, -2) if vk else x  # noqa: E731
        # a negative slot: the sequence starts from zero whatever its flag, and nothing is written
        h0 = torch.stack([logical(before[int(s)]) * (bool(i) and int(s) >= 0) for s, i in zip(slots, init)])
        o_r, s_r = ref.recurrent_gated_delta_rule_ref(q, k, v, g, beta, cu_seqlens=cu, initial_state=h0)
        ok = slots >= 0
        assert rel(o.float(), o_r) < 2e-3, (config, rel(o.float(), o_r))
        assert rel(logical(full[slots[ok]]), s_r[ok]) < 1e-3, (config, rel(logical(full[slots[ok]]), s_r[ok]))
        assert bool((full[3] == 0).all())
        for s in sorted(set(range(5)) - set(slots[ok].tolist())):
            assert torch.equal(full[s], before[s]), (config, s)

    # the pipelined path's segments (on CPU they run in order on one stream): one-chunk segments, so the
    # 70-token sequence carries its state through the fp32 carry, and an empty sequence in the middle
    cu2, slots2, init2 = torch.tensor([0, 1, 71, 71, 76]), torch.tensor([4, 0, 3, 2]), torch.tensor([1, 0, 0, 1])
    pool_run(q, k, v, a, b, A_log, cu2, slots2, init2, {"segment_chunks": 1, "first_segment": 1})
    # ... with the 70-token sequence on a negative slot (flagged with an initial state): from zero, and
    # neither its carry's end nor its final state reaches the pool
    pad_slots2, pad_init2 = torch.tensor([4, -1, 3, 2]), torch.tensor([1, 1, 0, 1])
    pool_run(q, k, v, a, b, A_log, cu2, pad_slots2, pad_init2, {"segment_chunks": 1, "first_segment": 1})
    # the scan's chunk tiles by TMA descriptors (the prep's chunk-major, zero-padded q and k), in one-chunk
    # segments with an empty sequence, and on a negative slot
    tma_segments = {"tma": True, "segment_chunks": 1, "first_segment": 1}
    pool_run(q, k, v, a, b, A_log, cu2, slots2, init2, tma_segments)
    pool_run(q, k, v, a, b, A_log, cu2, pad_slots2, pad_init2, tma_segments)
    # the inverse's products on fp16 operands, from A's blocks stored in fp16
    pool_run(q, k, v, a, b, A_log, cu2, slots2, init2, {"inverse_precision": "fp16", "diag_precision": "fp16",
                                                        "a_fp16": True})
    # the transposed scan ([BV, DK] state tiles, BV 64) on Dv 64: a "vk" pool, one-chunk segments (the
    # fp32 carry, transposed too) and an empty sequence
    v4 = torch.randn(t, hv, 64).half()
    pool_run(q, k, v4, a, b, A_log, cu2, slots2, init2, {"transposed": True, "BV": 64, "segment_chunks": 1,
                                                          "first_segment": 1}, "vk")
    # ... and on 16-column tiles (mma.sync on a GPU: below wgmma's M of 64), four per head
    pool_run(q, k, v4, a, b, A_log, cu2, slots2, init2, {"transposed": True, "BV": 16, "segment_chunks": 1,
                                                          "first_segment": 1}, "vk")
    # sequences in parts of one chunk (the 200-token one in four, so the combine runs), an empty one
    cu3, slots3, init3 = torch.tensor([0, 1, 201, 201, 206]), torch.tensor([4, 0, 3, 2]), torch.tensor([1, 1, 0, 0])
    t3 = 206
    q3, k3 = torch.randn(t3, hk, dk).half(), torch.randn(t3, hk, dk).half()
    v3, a3, b3 = torch.randn(t3, hv, dv).half(), torch.randn(t3, hv).half(), torch.randn(t3, hv).half()
    slow = A_log - 4.0  # slow decay: every part's state reaches the next
    pool_run(q3, k3, v3, a3, b3, slow, cu3, slots3, init3, {"part_chunks": 1})
    pool_run(q3, k3, v3, a3, b3, slow, cu3, torch.tensor([4, -1, 3, 2]), init3, {"part_chunks": 1})
    pool_run(q3, k3, v3, a3, b3, slow, cu3, slots3, init3, {"part_chunks": 1, "tma": True})
    full = torch.zeros(5, hv, dk, dv)
    try:  # one pipeline stage for the parts' scans is refused (it faulted once on the device)
        prefill.gdn_prefill(q3, k3, v3, a3, b3, slow, dt, cu_seqlens=cu3, state=full, state_slots=slots3,
                            has_initial_state=init3.bool(), _config={"part_chunks": 1, "part_stages": 1})
        raise AssertionError("part_stages 1 accepted")
    except ValueError as e:
        assert "part_stages" in str(e)
    try:  # the transposed scan has no parts phases
        prefill.gdn_prefill(q3, k3, v3, a3, b3, slow, dt, cu_seqlens=cu3, state=full, state_slots=slots3,
                            has_initial_state=init3.bool(), _config={"part_chunks": 1, "transposed": True})
        raise AssertionError("transposed parts accepted")
    except ValueError as e:
        assert "transposed" in str(e)
    try:
        prefill.gdn_prefill(q3, k3, v3, a3, b3, slow, dt, cu_seqlens=cu3, state=full, state_slots=slots3,
                            has_initial_state=init3.bool(), _config={"part_chunks": -1})
        raise AssertionError("part_chunks -1 accepted")
    except ValueError as e:
        assert "part_chunks" in str(e)
    try:  # a misspelt launch-config key is an error, not a silently ignored sweep point
        prefill.gdn_prefill(q, k, v, a, b, A_log, dt, cu_seqlens=cu, state=pool, state_slots=slots,
                            has_initial_state=init, state_layout="vk", _config={"bv": 32})
        raise AssertionError("unknown _config key accepted")
    except ValueError as e:
        assert "bv" in str(e)
    # decode_multi: fp16 in/out (the interpreter truncates when storing bf16), padding row,
    # intermediate states, vk layout
    nb, t = 3, 2
    q, k = torch.randn(nb, t, hk, dk).half(), torch.randn(nb, t, hk, dk).half()
    v, a, b = torch.randn(nb, t, hv, dv).half(), torch.randn(nb, t, hv).bfloat16(), torch.randn(nb, t, hv)
    full = torch.randn(4, hv, dk, dv)
    pool, before = full.transpose(-1, -2), full.clone()
    inter = torch.full((nb, t, hv, dv, dk), float("nan"))
    slots = torch.tensor([2, -1, 0])
    o = decode.gdn_decode_multi(q, k, v, a, b, A_log, dt, state=pool, state_slots=slots,
                                intermediate_states=inter, state_layout="vk")
    pool2 = before.clone()
    o2 = ref.gdn_decode_multi(q.float(), k.float(), v.float(), a, b, A_log, dt, state=pool2,
                              state_slots=slots, state_layout="kv")
    assert rel(o[[0, 2]].float(), o2[[0, 2]]) < 2e-3 and bool((o[1] == 0).all())
    assert rel(full, pool2) < 1e-5 and torch.isnan(inter[1]).all()
    assert rel(inter[[0, 2], -1].transpose(-1, -2), full[[2, 0]]) < 1e-6
    # one token per sequence with a 16-bit pool and q/k: the tensor-core reduction kernel (fp16 here, as
    # above), 2 column tiles per head, both layouts, a padding row whose inputs are NaN
    dv2 = 32
    q, k = torch.randn(nb, hk, dk).half(), torch.randn(nb, hk, dk).half()
    v, a, b = torch.randn(nb, hv, dv2).half(), torch.randn(nb, hv), torch.randn(nb, hv)
    v[1] = float("nan")
    # (and the plain kernel): each with the (B*Hv, NV) grid and with V_FAST's 1-D grid
    for layout, cfg in (
        ("kv", (16, 1, True)), ("vk", (16, 1, True, True)), ("kv", (16, 1, False, True)), ("kv", (16, 1, True, 0, 1)),
        ("kv", (16, 1, True, 1, 1, 1)),  # a pair of column tiles per program
    ):
        full = (torch.randn(4, hv, dk, dv2) * 0.3).half()
        pool, before = (full if layout == "kv" else full.transpose(-1, -2)), full.clone()
        o = decode.gdn_decode(q, k, v, a, b, A_log, dt, state=pool, state_slots=slots, state_layout=layout,
                              _config=cfg)
        pool2 = before.float()
        o2 = ref.gdn_decode(q.float(), k.float(), v.float(), a, b, A_log, dt, state=pool2, state_slots=slots)
        err = rel(o[[0, 2]].float(), o2[[0, 2]])
        assert err < 2e-3 and bool((o[1] == 0).all()), (layout, cfg, err)
        assert rel(full.float(), pool2) < 1e-3 and torch.equal(full[[1, 3]], before[[1, 3]])
    # Dk = 8 is below an MMA operand's K: the plain kernel runs whatever the config asks
    decode._decode_mma_kernel = None  # launching it would raise
    q8, k8 = q[..., :8].contiguous(), k[..., :8].contiguous()
    full = (torch.randn(4, hv, 8, dv2) * 0.3).half()
    pool2 = full.float()
    o = decode.gdn_decode(q8, k8, v, a, b, A_log, dt, state=full, state_slots=slots, _config=(16, 1, True))
    o2 = ref.gdn_decode(q8.float(), k8.float(), v.float(), a, b, A_log, dt, state=pool2, state_slots=slots)
    assert rel(o[[0, 2]].float(), o2[[0, 2]]) < 2e-3 and rel(full.float(), pool2) < 1e-3
    print("OK")
    """
)


def test_prefill_segments_cover_the_chunks_once():
    pytest.importorskip("triton")
    from deltaserve.ops.gdn.prefill import _pipelined, _segments

    assert _segments(513, 16, 128) == [(0, 16), (16, 144), (144, 272), (272, 400), (400, 513)]
    assert _segments(513, 0, 0) == [(0, 513)] and _segments(100, 16, 128) == [(0, 100)]
    assert _segments(20, 0, 8) == [(0, 8), (8, 16), (16, 20)]
    assert not _pipelined(torch.device("cpu"), 513, 1, 32, 4)  # no side streams off CUDA


def test_prefill_scan_plan(monkeypatch):
    """The scan's (BV, stages, transposed) by program count on a 132-SM card: one program per SM at 3
    stages while they fit, two per SM beyond, transposed 64-column tiles once those alone outnumber
    the SMs (not beside the pipelined prep); CPU keeps the one-program plan."""
    pytest.importorskip("triton")
    from deltaserve.ops.gdn import prefill

    monkeypatch.setattr(prefill, "num_sms", lambda device: 132)
    cuda = torch.device("cuda")
    assert prefill._scan_tiles(cuda, 1, 32, 128, False) == (32, 3, False)  # 128 programs
    assert prefill._scan_tiles(cuda, 1, 8, 128, False) == (16, 3, False)  # Hv 8: 16-column tiles
    assert prefill._scan_tiles(cuda, 2, 32, 128, False) == (32, 2, False)  # 256 at BV 32, 128 at BV 64
    assert prefill._scan_tiles(cuda, 8, 32, 128, False) == (64, 2, True)
    assert prefill._scan_tiles(cuda, 1, 64, 128, True) == (64, 3, False)  # beside the pipelined prep
    assert prefill._scan_tiles(cuda, 2, 32, 128, True) == (32, 3, False)  # segments hold one sequence
    assert prefill._scan_tiles(torch.device("cpu"), 8, 32, 128, False) == (32, 3, False)


def test_prefill_tma_plan(monkeypatch):
    """TMA for the scan's chunk tiles on Hopper, over sequences of 8192 tokens and more on average, at
    column tiles of at most 32, never transposed or in parts; pointers elsewhere (CPU, other cards)."""
    pytest.importorskip("triton")
    from deltaserve.ops.gdn import prefill

    cuda = torch.device("cuda")
    assert not prefill._use_tma(torch.device("cpu"), 32, False, False, 512)
    monkeypatch.setattr(prefill, "_is_hopper", lambda device: True)
    assert prefill._use_tma(cuda, 16, False, False, 256) and prefill._use_tma(cuda, 32, False, False, 128)
    assert not prefill._use_tma(cuda, 32, False, False, 127)  # under 8192 tokens per sequence
    assert not prefill._use_tma(cuda, 32, False, True, 512)  # parts
    assert not prefill._use_tma(cuda, 64, False, False, 512) and not prefill._use_tma(
        cuda, 64, True, False, 512
    )
    monkeypatch.setattr(prefill, "_is_hopper", lambda device: False)
    assert not prefill._use_tma(cuda, 32, False, False, 512)


def test_kernels_under_triton_interpreter():
    """Runs the prefill and decode kernels on CPU with TRITON_INTERPRET=1 (in a subprocess)."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", _INTERPRET_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]


def test_prefill_part_plan(monkeypatch):
    """Parts only for long sequences whose one-pass scan leaves the card idle; about 1.7 phase-2
    programs per SM."""
    pytest.importorskip("triton")
    from deltaserve.ops.gdn import prefill

    monkeypatch.setattr(prefill, "num_sms", lambda device: 132)
    cuda = torch.device("cuda")
    assert prefill._part_chunks(torch.device("cpu"), 512, 1, 32) == 0
    assert prefill._part_chunks(cuda, 512, 1, 32) == 64  # Hv 8 x 32k tokens: 8 parts
    assert prefill._part_chunks(cuda, 512, 1, 16) == 35  # Hv 4: 15 parts
    assert prefill._part_chunks(cuda, 512, 1, 64) == 0  # Hv 16: tied with the pipelined segments
    assert prefill._part_chunks(cuda, 512, 1, 128) == 0  # Hv 32: one pass fills the card
    assert prefill._part_chunks(cuda, 127, 1, 32) == 0  # under 8192 tokens
    assert prefill._part_chunks(cuda, 255, 2, 32) == 0  # ... on average
    # a 64k-token and a short sequence at Hv 4: 8 parts of the mean length would cut the long one into
    # 32, so the parts grow to leave it 16
    assert prefill._part_chunks(cuda, 1026, 2, 32) == 65
    assert prefill._part_chunks(cuda, 4096, 1, 1) == 256  # at most 16 parts
