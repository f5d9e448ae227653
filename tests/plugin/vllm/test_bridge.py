"""The vLLM bridge without vLLM: stand-in metadata and cache tensors in vLLM's layouts.

Checks that `bridge` maps vLLM's per-layer metadata and its CPU_ATTN / GDN cache layouts onto our
`ForwardBatch`, and that a model driven through it (per-layer state slots, decodes first, a padded
position tensor) gives the same logits as our standalone `StaticRunner`.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from deltaserve.models.registry import load_model
from deltaserve.plugin.vllm import bridge
from deltaserve.testing.harness import StaticRunner


def test_cpu_attn_kv_views_match_vllm_packing() -> None:
    nb, hkv, bs, d = 3, 2, 4, 8
    kv = torch.zeros(nb, hkv, bs, 2 * d)
    k, v = bridge.attention_kv_views(kv, hkv, d)
    assert k.shape == v.shape == (nb, bs, hkv, d)
    k[1, 2, 1] = 1.0
    v[2, 3, 0] = 2.0
    # vLLM's CPU backend reads the same tensor as view(NB, Hkv, 2*BS, D).chunk(2, dim=2)
    key_cache, value_cache = kv.view(nb, hkv, 2 * bs, d).chunk(2, dim=2)
    assert torch.equal(key_cache[1, 1, 2], torch.ones(d))
    assert torch.equal(value_cache[2, 0, 3], torch.full((d,), 2.0))
    assert kv.sum() == d * 3.0  # nothing else written


def test_flash_style_kv_views_and_bad_layout() -> None:
    kv = torch.zeros(2, 5, 16, 2, 8)
    k, v = bridge.attention_kv_views(kv, 2, 8)
    assert k.data_ptr() == kv[0].data_ptr() and v.data_ptr() == kv[1].data_ptr()
    with pytest.raises(bridge.UnsupportedBatch, match="kv_cache"):
        bridge.attention_kv_views(torch.zeros(5, 16, 2, 8), 2, 8)


def test_gdn_state_views_sd_and_ds() -> None:
    conv_sd = torch.zeros(6, 3, 40)  # [S, W-1, D]
    ssm = torch.zeros(6, 4, 8, 16)  # [S, Hv, Dv, Dk]
    conv, s = bridge.gdn_state_views((conv_sd, ssm), conv_dim_first=False, conv_width=4)
    assert conv.shape == (6, 40, 3) and conv.data_ptr() == conv_sd.data_ptr() and s is ssm
    conv_ds = torch.zeros(6, 40, 3)
    conv, _ = bridge.gdn_state_views((conv_ds, ssm), conv_dim_first=True, conv_width=4)
    assert conv is conv_ds
    with pytest.raises(bridge.UnsupportedBatch, match="speculative"):
        bridge.gdn_state_views((torch.zeros(6, 5, 40), ssm), conv_dim_first=False, conv_width=4)


def test_speculative_metadata_is_rejected() -> None:
    attn = SimpleNamespace(
        num_actual_tokens=2,
        query_start_loc=torch.tensor([0, 2], dtype=torch.int32),
        seq_lens=torch.tensor([5], dtype=torch.int32),
        block_table=torch.zeros(1, 1, dtype=torch.int32),
        slot_mapping=torch.zeros(2, dtype=torch.int64),
        max_query_len=2,
        max_seq_len=5,
    )
    gdn = SimpleNamespace(num_decodes=0, num_prefills=0, num_spec_decodes=1, num_actual_tokens=2)
    states = bridge.state_tensors(
        {3: torch.zeros(2, 1, 16, 16)}, {}, num_kv_heads=1, head_dim=8, conv_dim_first=False, conv_width=4
    )
    with pytest.raises(bridge.UnsupportedBatch, match="speculative"):
        bridge.build_forward_batch(torch.arange(2), {3: attn}, {0: gdn}, states)


class FakeVllmHost:
    """Allocates caches the way vLLM lays them out and builds its per-step metadata.

    Attention layers share one block table; each GDN layer gets its own state slots in one shared
    pool (as vLLM's KV-cache groups do), so a bridge that used one layer's slots for all would fail.
    """

    def __init__(self, config, *, block_size: int = 16, num_blocks: int = 32, num_slots: int = 24) -> None:
        self.c = config
        self.bs = block_size
        hkv, d = config.num_key_value_heads, config.head_dim
        self.kv = {i: torch.zeros(num_blocks, hkv, block_size, 2 * d) for i in config.full_layers}
        w1 = config.linear_conv_kernel_dim - 1
        hv, dk, dv = config.linear_num_value_heads, config.linear_key_head_dim, config.linear_value_head_dim
        # One pool for all GDN layers: vLLM's KV-cache groups share memory, told apart by slot.
        pools = (torch.zeros(num_slots, w1, config.conv_dim), torch.zeros(num_slots, hv, dv, dk))
        self.gdn = {i: pools for i in config.linear_layers}
        self.blocks: dict[str, list[int]] = {}
        self.slots: dict[tuple[str, int], int] = {}
        self.lens: dict[str, int] = {}
        self.free_blocks = list(range(1, num_blocks))  # block 0 is vLLM's null block
        self.free_slots = list(range(1, num_slots))

    def step(self, work: list[tuple[str, list[int]]], pad_tokens: int = 0):
        """`work` must list decodes (one token, seen before) first, as vLLM orders them."""
        ids, pos, slot_mapping, cu, seq_lens, computed = [], [], [], [0], [], []
        for sid, toks in work:
            if sid not in self.lens:
                self.lens[sid] = 0
                self.blocks[sid] = []
                for layer in self.c.linear_layers:
                    self.slots[(sid, layer)] = self.free_slots.pop()
            start = self.lens[sid]
            computed.append(start)
            self.lens[sid] += len(toks)
            while len(self.blocks[sid]) * self.bs < self.lens[sid]:
                self.blocks[sid].append(self.free_blocks.pop())
            for p in range(start, self.lens[sid]):
                slot_mapping.append(self.blocks[sid][p // self.bs] * self.bs + p % self.bs)
                pos.append(p)
            ids.extend(toks)
            cu.append(cu[-1] + len(toks))
            seq_lens.append(self.lens[sid])
        n = len(ids)
        max_blocks = max(len(self.blocks[s]) for s, _ in work)
        table = torch.zeros(len(work), max_blocks, dtype=torch.int32)
        for r, (sid, _) in enumerate(work):
            table[r, : len(self.blocks[sid])] = torch.tensor(self.blocks[sid], dtype=torch.int32)
        attn = SimpleNamespace(
            num_actual_tokens=n,
            query_start_loc=torch.tensor(cu, dtype=torch.int32),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            block_table=table,
            slot_mapping=torch.tensor(slot_mapping + [-1] * pad_tokens, dtype=torch.int64),
            max_query_len=max(len(t) for _, t in work),
            max_seq_len=max(seq_lens),
        )
        num_decodes = sum(1 for (_, t), c in zip(work, computed) if len(t) == 1 and c > 0)
        num_prefills = len(work) - num_decodes
        gdn = {}
        for layer in self.c.linear_layers:
            gdn[layer] = SimpleNamespace(
                num_decodes=num_decodes,
                num_prefills=num_prefills,
                num_spec_decodes=0,
                spec_sequence_masks=None,
                num_actual_tokens=n,
                non_spec_state_indices_tensor=torch.tensor(
                    [self.slots[(s, layer)] for s, _ in work], dtype=torch.int32
                ),
                has_initial_state=torch.tensor(computed) > 0 if num_prefills else None,
            )
        positions = torch.tensor(pos + [0] * pad_tokens, dtype=torch.int64)
        input_ids = torch.tensor(ids + [0] * pad_tokens, dtype=torch.int64)
        return input_ids, positions, {i: attn for i in self.c.full_layers}, gdn


@torch.no_grad()
def test_model_through_bridge_matches_static_runner(tiny_checkpoint) -> None:
    model = load_model(tiny_checkpoint("qwen3-next-a"))
    cfg = model.config
    host = FakeVllmHost(cfg)
    ref = StaticRunner(model, ssm_layout="vk", conv_layout="wd")
    gen = torch.Generator().manual_seed(1)

    def toks(k: int) -> list[int]:
        return torch.randint(0, cfg.vocab_size, (k,), generator=gen).tolist()

    steps = [
        [("a", toks(5)), ("b", toks(3))],  # two prefills
        [("a", toks(1)), ("b", toks(1))],  # decodes only
        [("b", toks(1)), ("a", toks(1)), ("c", toks(4))],  # decodes first, then a prefill
        [("c", toks(1)), ("a", toks(1))],
    ]
    for work in steps:
        input_ids, positions, attn_metas, gdn_metas = host.step(work, pad_tokens=2)
        states = bridge.state_tensors(
            host.kv,
            host.gdn,
            num_kv_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim,
            conv_dim_first=False,
            conv_width=cfg.linear_conv_kernel_dim,
        )
        batch = bridge.build_forward_batch(positions, attn_metas, gdn_metas, states)
        n = batch.num_tokens
        assert n == input_ids.shape[0] - 2
        assert batch.gdn is None and batch.attn is None  # per-layer metadata lives in the backend
        hidden = model(input_ids[:n], batch)
        logits = model.compute_logits(hidden)  # [n, V]
        expected = torch.cat(ref.step(work))  # [n, V]
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
