"""CUDA-graph capture of decode steps (forward + logits), one graph per padded batch size.

Static buffers hold a decode batch's metadata; a batch of `B` real sequences replays the graph of
the smallest captured size `>= B`. Padding rows use state slot -1 (no GDN state read or written),
slot_mapping -1 (no KV write), seq_len 1 over page 0 (a finite, ignored attention read).
"""

from __future__ import annotations

import logging

import torch

from deltaserve.context import AttentionMetadata, ForwardBatch, GDNMetadata

logger = logging.getLogger("deltaserve.engine")


class GraphUnsafeError(RuntimeError):
    """The model's decode forward cannot be captured (it syncs with the host)."""


def capture_sizes(max_bs: int) -> list[int]:
    """1, 2, 4, 8, then every 8 up to `max_bs` (always including `max_bs`)."""
    sizes = [s for s in (1, 2, 4) if s < max_bs] + list(range(8, max_bs, 8))
    return sorted(set(sizes + [max_bs])) if max_bs > 0 else []


class DecodeGraphs:
    def __init__(self, runner, max_bs: int) -> None:
        self.runner = runner
        self.max_bs = max_bs
        self.sizes = capture_sizes(max_bs)
        dev = runner.device
        width = runner.max_blocks_per_seq
        # two staging blocks so one step needs one H2D copy each: int64 rows (ids, positions,
        # slot_mapping) and int32 rows (seq_lens, state_slots); the batch fields are row views
        self.i64 = torch.zeros((3, max_bs), dtype=torch.int64, device=dev)
        self.i32 = torch.zeros((2, max_bs), dtype=torch.int32, device=dev)
        self.input_ids, self.positions, self.slot_mapping = self.i64[0], self.i64[1], self.i64[2]
        self.seq_lens, self.state_slots = self.i32[0], self.i32[1]
        self.slot_mapping.fill_(-1)
        self.seq_lens.fill_(1)
        self.state_slots.fill_(-1)
        self.cu_seqlens = torch.arange(max_bs + 1, dtype=torch.int32, device=dev)
        self.block_tables = torch.zeros((max_bs, width), dtype=torch.int32, device=dev)
        self.has_init = torch.ones(max_bs, dtype=torch.bool, device=dev)
        # host copy of the block tables; `_table_rows[i]` is what row i holds (zeros after it). Only
        # rows that changed are rewritten, and the device copy is skipped when nothing did. Pageable
        # memory on purpose: its copy is staged before `copy_` returns, so rewriting it is always safe.
        self._host_tables = torch.zeros((max_bs, width), dtype=torch.int32)
        self._table_rows: list[list[int]] = [[] for _ in range(max_bs)]
        self._tables_on_device = (0, 0)  # (rows, cols) of block_tables known to equal the host copy
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.pool = None
        self.num_replays = 0

    def fits(self, bs: int) -> bool:
        return 0 < bs <= self.max_bs and bool(self.graphs)

    def _batch(self, bs: int) -> ForwardBatch:
        r = self.runner
        return ForwardBatch(
            positions=self.positions[:bs],
            cu_seqlens=self.cu_seqlens[: bs + 1],
            seq_lens=self.seq_lens[:bs],
            num_seqs=bs,
            max_query_len=1,
            max_seq_len=r.config.max_model_len,
            attn=AttentionMetadata(
                block_tables=self.block_tables[:bs],
                slot_mapping=self.slot_mapping[:bs],
                block_size=r.config.block_size,
            ),
            gdn=GDNMetadata(
                state_slots=self.state_slots[:bs], has_initial_state=self.has_init[:bs], decode_only=True
            ),
            attn_backend=r.backend,
            gdn_backend=r.backend,
        )

    def _forward(self, bs: int) -> torch.Tensor:
        hidden = self.runner.model(self.input_ids[:bs], self._batch(bs))  # [bs, H]
        return self.runner.model.compute_logits(hidden)  # [bs, V]

    @torch.no_grad()
    def check_graph_safe(self) -> None:
        """One decode forward with CUDA sync debugging set to "error": any host sync inside the
        forward (`.item()`, `.tolist()`, data-dependent shapes) raises here, before a capture is
        attempted (a failed capture can leave the CUDA context unusable)."""
        prev = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            self._forward(self.sizes[0])
        except RuntimeError as exc:
            raise GraphUnsafeError(f"the decode forward synchronizes with the host: {exc}") from None
        finally:
            torch.cuda.set_sync_debug_mode(prev)

    @torch.no_grad()
    def capture(self) -> None:
        """Capture every size, largest first (the graphs share one memory pool)."""
        import time

        t0 = time.perf_counter()
        dev = self.runner.device
        self._forward(self.sizes[0])  # compile kernels / settle lazy state outside the sync check
        torch.cuda.synchronize(dev)
        self.check_graph_safe()
        for bs in reversed(self.sizes):
            for _ in range(2):  # warm-up: Triton compilation, allocator
                self._forward(bs)
            torch.cuda.synchronize(dev)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.logits[bs] = self._forward(bs)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[bs] = graph
        torch.cuda.synchronize(dev)
        logger.info(
            "captured %d decode graphs (sizes %s) in %.1f s",
            len(self.sizes),
            self.sizes,
            time.perf_counter() - t0,
        )

    def run(
        self,
        ids: list[int],
        positions: list[int],
        slot_mapping: list[int],
        seq_lens: list[int],
        tables: list[list[int]],
        slots: list[int],
        *,
        input_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Replay the graph for `len(ids)` decode rows; returns their logits `[B, V]` (a view).

        `input_ids` ([B] int64 on the device), when given, replaces `ids` (then placeholders): the
        previous step's sampled tokens, copied device-to-device after the staging copy, so the host
        never waits for them."""
        b = len(ids)
        size = self.stage(ids, positions, slot_mapping, seq_lens, tables, slots)
        if input_ids is not None:
            self.input_ids[:b].copy_(input_ids, non_blocking=True)  # stream-ordered after the stage copy
        self.graphs[size].replay()
        self.num_replays += 1
        return self.logits[size][:b]

    def stage(
        self,
        ids: list[int],
        positions: list[int],
        slot_mapping: list[int],
        seq_lens: list[int],
        tables: list[list[int]],
        slots: list[int],
    ) -> int:
        """Write one decode batch (`B = len(ids)` rows) into the static buffers, padded to the captured
        size it returns: ids, positions and slot_mapping in one int64 copy, seq_lens and state slots in
        one int32 copy, and the block tables (`[:size, :width]`, zeros past each row) only if changed."""
        b = len(ids)
        size = next(s for s in self.sizes if s >= b)
        pad = size - b
        host = torch.tensor(
            ids + [0] * pad + positions + [0] * pad + slot_mapping + [-1] * pad, dtype=torch.int64
        ).view(3, size)
        small = torch.tensor(seq_lens + [1] * pad + slots + [-1] * pad, dtype=torch.int32).view(2, size)
        width = max(len(t) for t in tables)
        changed = self._stage_tables(tables, size)
        self.i64[:, :size].copy_(host, non_blocking=True)
        self.i32[:, :size].copy_(small, non_blocking=True)
        rows, cols = self._tables_on_device
        if changed or size > rows or width > cols:
            self.block_tables[:size, :width].copy_(self._host_tables[:size, :width], non_blocking=True)
            self._tables_on_device = (size, width)
        return size

    def _stage_tables(self, tables: list[list[int]], size: int) -> bool:
        """Make host rows `[:size]` hold `tables` (padding rows: empty); True if any row changed."""
        ht, held = self._host_tables, self._table_rows
        changed = False
        for i in range(size):
            row = tables[i] if i < len(tables) else []
            old = held[i]
            if row == old:
                continue
            changed = True
            n, m = len(row), len(old)
            k = m if n > m and row[:m] == old else 0  # a grown row: write only its new pages
            if n > k:
                ht[i, k:n] = torch.tensor(row[k:], dtype=torch.int32)
            if m > n:
                ht[i, n:m] = 0
            held[i] = list(row)
        return changed

    @torch.no_grad()
    def time_replay(self, bs: int, iters: int = 50) -> float:
        """Median GPU ms of one replay of the graph for `bs` on all-padding inputs (benchmarks).

        Padding rows touch no state (slot -1, slot_mapping -1), so this is safe at any time.
        """
        size = next(s for s in self.sizes if s >= bs)
        self.slot_mapping[:size].fill_(-1)
        self.state_slots[:size].fill_(-1)
        self.seq_lens[:size].fill_(1)
        self.block_tables[:size].zero_()
        self._tables_on_device = (0, 0)
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self.graphs[size].replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2]
