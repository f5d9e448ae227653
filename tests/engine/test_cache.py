"""Block manager, slot pool, cache plan and the integrity check."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from deltaserve.engine.cache import BlockManager, CacheError, CacheSpec, HybridCache, SlotPool, plan_cache
from deltaserve.models.config import ModelConfig
from deltaserve.testing import cached_checkpoint


def test_block_manager_allocate_free_and_errors():
    bm = BlockManager(num_blocks=5, block_size=4)
    assert bm.blocks_for(0) == 0 and bm.blocks_for(1) == 1 and bm.blocks_for(4) == 1 and bm.blocks_for(5) == 2
    a = bm.allocate(3)
    assert len(set(a)) == 3 and bm.num_free == 2 and bm.usage() == pytest.approx(0.6)
    with pytest.raises(CacheError, match="cannot allocate 3 blocks"):
        bm.allocate(3)
    bm.free(a[:1])
    with pytest.raises(CacheError, match="double free"):
        bm.free(a[:1])
    bm.check(a[1:])
    with pytest.raises(CacheError, match="leaked"):
        bm.check(a[2:])
    with pytest.raises(CacheError, match="owned twice"):
        bm.check([a[1], a[1], a[2]])
    with pytest.raises(CacheError, match="owned but free"):
        bm.check(a)


def test_slot_pool_never_hands_out_a_slot_twice():
    pool = SlotPool(4)
    got = pool.allocate(4)
    assert sorted(got) == [0, 1, 2, 3] and not pool.can_allocate(1)
    pool.free([2])
    assert pool.allocate(1) == [2]


def test_hybrid_cache_grow_release_integrity():
    cache = HybridCache(num_slots=2, num_blocks=6, block_size=4)
    s1, s2 = SimpleNamespace(slot=None, blocks=[]), SimpleNamespace(slot=None, blocks=[])
    assert cache.can_admit(s1, 9)
    cache.admit(s1)
    assert cache.grow(s1, 9) and len(s1.blocks) == 3
    assert cache.grow(s1, 12) and len(s1.blocks) == 3  # still fits in 3 pages
    cache.admit(s2)
    assert not cache.grow(s2, 17)  # needs 5 pages, 3 free: nothing taken
    assert s2.blocks == [] and cache.blocks.num_free == 3
    assert cache.grow(s2, 12)
    cache.check_integrity([s1, s2])
    with pytest.raises(CacheError):
        cache.check_integrity([s1])  # s2's pages and slot would be leaked
    cache.release(s1)
    cache.release(s1)  # idempotent
    cache.check_integrity([s2])
    assert cache.usage() == pytest.approx(0.5)


def test_cache_spec_matches_tensor_sizes():
    import torch

    from deltaserve.backends import allocate_state_tensors

    cfg = ModelConfig.from_hf(cached_checkpoint("qwen3.5-dense-a"))
    spec = CacheSpec.for_model(cfg, block_size=8, dtype="bfloat16", ssm_dtype="float32")
    st = allocate_state_tensors(
        cfg,
        num_slots=3,
        num_blocks=5,
        block_size=8,
        dtype=torch.bfloat16,
        device="cpu",
        ssm_dtype=torch.float32,
    )
    kv = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in st.kv.values())
    slots = sum(t.numel() * t.element_size() for t in list(st.conv.values()) + list(st.ssm.values()))
    assert kv == 5 * spec.block_bytes
    assert slots == 3 * spec.slot_bytes


def test_plan_cache_split_and_errors():
    spec = CacheSpec(block_bytes=100, slot_bytes=1000, block_size=16)
    plan = plan_cache(spec, 10_000, max_num_seqs=4, max_model_len=64)
    assert plan.num_slots == 4 and plan.num_blocks == 16 and not plan.note  # capped: 4 full sequences
    plan = plan_cache(spec, 5_600, max_num_seqs=4, max_model_len=64)
    assert plan.num_slots == 4 and plan.num_blocks == 16
    # budget too small for 8 slots: clamp and explain
    plan = plan_cache(spec, 5_000, max_num_seqs=8, max_model_len=64)
    assert plan.num_slots == 4 and "only 4 GDN state slots" in plan.note
    assert plan.num_slots * 1000 + plan.num_blocks * 100 <= 5_000 and plan.num_blocks >= 4
    with pytest.raises(ValueError, match="cannot hold one sequence"):
        plan_cache(spec, 1_200, max_num_seqs=1, max_model_len=640)
    plan = plan_cache(spec, 10_000, max_num_seqs=2, max_model_len=64, num_blocks_override=7)
    assert plan.num_blocks == 7 and plan.num_slots == 2
