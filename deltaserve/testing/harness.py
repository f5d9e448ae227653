"""A minimal static runner for tests: drives a model through `ForwardBatch` with real state pools.

It owns slot and block bookkeeping for a handful of sequences, nothing more (no scheduling). The
engine's runner is the production path; this one exists so model tests and host-bridge tests can
compare against "our standalone path" without the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from deltaserve.backends import OpsBackend, allocate_state_tensors
from deltaserve.context import AttentionMetadata, ForwardBatch, GDNMetadata


@dataclass
class _Seq:
    slot: int
    blocks: list[int] = field(default_factory=list)
    length: int = 0


class StaticRunner:
    """Runs steps of `(seq_id, new_token_ids)` lists; returns fp32 logits of every new token."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        num_slots: int = 8,
        block_size: int = 16,
        num_blocks: int = 128,
        ssm_layout: str = "kv",
        conv_layout: str = "wd",
        ssm_dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.block_size = block_size
        self.states = allocate_state_tensors(
            model.config,
            num_slots=num_slots,
            num_blocks=num_blocks,
            block_size=block_size,
            dtype=self.dtype,
            device=self.device,
            ssm_dtype=ssm_dtype,
            ssm_layout=ssm_layout,
            conv_layout=conv_layout,
        )
        self.backend = OpsBackend(self.states)
        # Hand out slots and blocks from the far end so index 0 is never special by accident.
        self.free_slots = list(range(num_slots))
        self.free_blocks = list(range(num_blocks))
        self.seqs: dict[object, _Seq] = {}

    def release(self, seq_id: object) -> None:
        seq = self.seqs.pop(seq_id)
        self.free_slots.append(seq.slot)
        self.free_blocks.extend(seq.blocks)

    @torch.no_grad()
    def step(self, work: list[tuple[object, list[int]]]) -> list[torch.Tensor]:
        """One forward over the given sequences' new tokens; returns per-sequence `[n_new, V]` logits."""
        ids, positions, slot_mapping, cu, seq_lens, slots, has_init = [], [], [], [0], [], [], []
        for seq_id, tokens in work:
            if seq_id not in self.seqs:
                self.seqs[seq_id] = _Seq(slot=self.free_slots.pop())
            seq = self.seqs[seq_id]
            has_init.append(seq.length > 0)
            start = seq.length
            seq.length += len(tokens)
            while len(seq.blocks) * self.block_size < seq.length:
                seq.blocks.append(self.free_blocks.pop())
            for pos in range(start, seq.length):
                slot_mapping.append(
                    seq.blocks[pos // self.block_size] * self.block_size + pos % self.block_size
                )
            ids.extend(tokens)
            positions.extend(range(start, seq.length))
            cu.append(cu[-1] + len(tokens))
            seq_lens.append(seq.length)
            slots.append(seq.slot)
        max_blocks = max(len(self.seqs[s].blocks) for s, _ in work)
        tables = torch.full((len(work), max_blocks), -1, dtype=torch.int32)
        for i, (seq_id, _) in enumerate(work):
            blocks = self.seqs[seq_id].blocks
            tables[i, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
        dev = self.device
        query_lens = [len(t) for _, t in work]
        batch = ForwardBatch(
            positions=torch.tensor(positions, dtype=torch.int64, device=dev),
            cu_seqlens=torch.tensor(cu, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            num_seqs=len(work),
            max_query_len=max(query_lens),
            max_seq_len=max(seq_lens),
            attn=AttentionMetadata(
                block_tables=tables.to(dev),
                slot_mapping=torch.tensor(slot_mapping, dtype=torch.int64, device=dev),
                block_size=self.block_size,
            ),
            gdn=GDNMetadata(
                state_slots=torch.tensor(slots, dtype=torch.int32, device=dev),
                has_initial_state=torch.tensor(has_init, dtype=torch.bool, device=dev),
                decode_only=all(n == 1 for n in query_lens) and all(has_init),
            ),
            attn_backend=self.backend,
            gdn_backend=self.backend,
        )
        hidden = self.model(torch.tensor(ids, dtype=torch.int64, device=dev), batch)  # [T, H]
        logits = self.model.compute_logits(hidden)  # [T, V]
        return list(torch.split(logits, query_lens))
