"""CUDA-graph capture of decode steps (forward + logits), one graph per padded batch size.

Static buffers hold a decode batch's metadata; a batch of `B` real sequences replays the graph of
the smallest captured size `>= B`. Padding rows use state slot -1 (no GDN state read or written),
slot_mapping -1 (no KV write), seq_len 1 over page 0 (a finite, ignored attention read).
"""

from __future__ import annotations

import logging

import torch

from deltaserve.context import AttentionMetadata, ForwardBatch, GDNMetadata
from deltaserve.engine.transfer import copy_into

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
        # One staging block, so a step needs one host->device copy. The graph of size s reads
        # `words[:4s]` (int64): positions [0:s], slot_mapping [s:2s], then s words viewed as int32
        # seq_lens and state slots, then the input ids [3s:4s]. The ids come last so a continuation
        # step can stage the first 3s words and keep the ids the previous replay's argmax left there.
        self.words = torch.zeros(4 * max_bs, dtype=torch.int64, device=dev)
        self.cu_seqlens = torch.arange(max_bs + 1, dtype=torch.int32, device=dev)
        self.block_tables = torch.zeros((max_bs, width), dtype=torch.int32, device=dev)
        self.has_init = torch.ones(max_bs, dtype=torch.bool, device=dev)
        # host copy of the block tables; `_table_rows[i]` is what row i holds (zeros after it). Only
        # rows that changed are rewritten, and the device copy is skipped when nothing did. Each copy
        # goes through its own pinned snapshot (`copy_into`), so rewriting this one is always safe.
        self._host_tables = torch.zeros((max_bs, width), dtype=torch.int32)
        self._table_rows: list[list[int]] = [[] for _ in range(max_bs)]
        self._tables_on_device = (0, 0)  # (rows, cols) of block_tables known to equal the host copy
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.pool = None
        self.num_replays = 0

    def fits(self, bs: int) -> bool:
        return 0 < bs <= self.max_bs and bool(self.graphs)

    def _size(self, bs: int) -> int:
        """The smallest captured size that holds `bs` rows."""
        return next(s for s in self.sizes if s >= bs)

    def _rows(self, bs: int) -> tuple[torch.Tensor, ...]:
        """The graph of size `bs`'s rows: ids, positions, slot_mapping (int64), seq_lens, state slots
        (int32), each `[bs]`."""
        w = self.words[: 4 * bs]
        positions, slot_mapping, pairs, ids = w.view(4, bs)
        seq_lens, slots = pairs.view(torch.int32).view(2, bs)
        return ids, positions, slot_mapping, seq_lens, slots

    def greedy_ids(self, bs: int) -> torch.Tensor:
        """`[bs]` int64: the argmax of each row's logits, written by the last replay of size `bs` into
        that size's input-id rows (so a chained greedy step reads them in place)."""
        return self._rows(bs)[0]

    def _stage_padding(self, bs: int) -> None:
        """Every row of size `bs` a padding row (no state or KV touched)."""
        ids, positions, slot_mapping, seq_lens, slots = self._rows(bs)
        ids.zero_()
        positions.zero_()
        slot_mapping.fill_(-1)
        seq_lens.fill_(1)
        slots.fill_(-1)
        self.block_tables[:bs].zero_()
        self._tables_on_device = (0, 0)

    def _batch(self, bs: int) -> ForwardBatch:
        r = self.runner
        _, positions, slot_mapping, seq_lens, slots = self._rows(bs)
        return ForwardBatch(
            positions=positions,
            cu_seqlens=self.cu_seqlens[: bs + 1],
            seq_lens=seq_lens,
            num_seqs=bs,
            max_query_len=1,
            max_seq_len=r.config.max_model_len,
            attn=AttentionMetadata(
                block_tables=self.block_tables[:bs],
                slot_mapping=slot_mapping,
                block_size=r.config.block_size,
            ),
            gdn=GDNMetadata(state_slots=slots, has_initial_state=self.has_init[:bs], decode_only=True),
            attn_backend=r.backend,
            gdn_backend=r.backend,
        )

    def _forward(self, bs: int) -> torch.Tensor:
        ids = self._rows(bs)[0]
        hidden = self.runner.model(ids, self._batch(bs))  # [bs, H]
        logits = self.runner.model.compute_logits(hidden)  # [bs, V]
        # greedy tokens ride in the graph: written over the ids just read (the forward is done with them)
        torch.argmax(logits, dim=-1, out=ids)
        return logits

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
        self._stage_padding(self.sizes[0])
        self._forward(self.sizes[0])  # compile kernels / settle lazy state outside the sync check
        torch.cuda.synchronize(dev)
        self.check_graph_safe()
        for bs in reversed(self.sizes):
            self._stage_padding(bs)
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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replay the graph for `len(ids)` decode rows; returns their logits `[B, V]` and greedy tokens
        `[B]` (views, valid until the next replay; the tokens equal `logits.argmax(-1)`).

        `input_ids` ([B] int64 on the device), when given, replaces `ids` (then placeholders): the
        previous step's sampled tokens, so the host never waits for them. When they are this size's
        `greedy_ids` (a chained greedy step) they are read in place; otherwise they are copied
        device-to-device after the staging copy."""
        b = len(ids)
        size = self._size(b)
        ids_rows = self.greedy_ids(size)  # also where the previous replay of this size left its argmax
        in_place = input_ids is not None and _same_view(input_ids, ids_rows[:b])
        if input_ids is not None and not in_place and _overlaps(input_ids, self.words):
            input_ids = input_ids.clone()  # another size's rows: the staging copy may overwrite them
        self.stage(ids, positions, slot_mapping, seq_lens, tables, slots, keep_ids=in_place)
        if input_ids is not None and not in_place:
            ids_rows[:b].copy_(input_ids, non_blocking=True)  # stream-ordered after the staging copy
        self.graphs[size].replay()
        self.num_replays += 1
        return self.logits[size][:b], ids_rows[:b]

    def stage(
        self,
        ids: list[int],
        positions: list[int],
        slot_mapping: list[int],
        seq_lens: list[int],
        tables: list[list[int]],
        slots: list[int],
        *,
        keep_ids: bool = False,
    ) -> int:
        """Write one decode batch (`B = len(ids)` rows) into the static buffers, padded to the captured
        size it returns: one int64 copy of the size's staging block (without the ids when `keep_ids`),
        and the block tables (`[:size, :width]`, zeros past each row) only if changed."""
        b = len(ids)
        size = self._size(b)
        pad = size - b
        pairs = torch.tensor(seq_lens + [1] * pad + slots + [-1] * pad, dtype=torch.int32).view(torch.int64)
        parts = [torch.tensor(positions + [0] * pad + slot_mapping + [-1] * pad, dtype=torch.int64), pairs]
        if not keep_ids:
            parts.append(torch.tensor(ids + [0] * pad, dtype=torch.int64))
        n = (3 if keep_ids else 4) * size
        block = torch.empty(n, dtype=torch.int64, pin_memory=self.words.is_cuda)
        torch.cat(parts, out=block)
        width = max(len(t) for t in tables)
        changed = self._stage_tables(tables, size)
        copy_into(self.words[:n], block)
        rows, cols = self._tables_on_device
        if changed or size > rows or width > cols:
            copy_into(self.block_tables[:size, :width], self._host_tables[:size, :width])
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

    def _stage_timing_rows(self, bs: int) -> None:
        """Padding rows (no state or KV touched) that carry distinct token ids, fixed by a seed.

        Trap: with one id in every row (plain padding) every row routes to the same top-k experts, so
        a replay of a MoE model reads a fraction of the expert weights a real batch of `bs` tokens
        does (Qwen3-Next at 16 rows: 10 experts instead of ~144).
        """
        self._stage_padding(bs)
        gen = torch.Generator().manual_seed(bs)
        ids = torch.randint(self.runner.vocab_size, (bs,), generator=gen)
        self._rows(bs)[0].copy_(ids)

    @torch.no_grad()
    def time_replay(self, bs: int, iters: int = 50) -> float:
        """Median GPU ms of one replay of the graph for `bs` (benchmarks), on padding rows with
        distinct token ids (`_stage_timing_rows`); they touch no state, so this is safe at any time.

        Trap: a replay writes its greedy tokens over the ids it read, so the ids are restaged before
        every replay (a device copy outside the timed span). Without that, every replay after the first
        ran on the previous one's argmax, which need not spread over the experts like real tokens
        (measured before this fix, B=16, 8-layer Qwen3-Next on an H200: the MoE kernels took 0.72 ms per
        replay against 1.87 ms per real engine step). Even with distinct ids, the padding rows' hidden
        states (no GDN or attention output) route to fewer distinct experts than real tokens (same
        model, after the fix: 1.20 ms against 1.88 ms), so at B > 1 this is a lower bound; real steps'
        device time is ``bench.step_profile.engine_step_profile``.
        """
        size = self._size(bs)
        self._stage_timing_rows(size)
        ids_rows = self._rows(size)[0]
        ids = ids_rows.clone()
        times = []
        for _ in range(iters):
            ids_rows.copy_(ids)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self.graphs[size].replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2]


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def _overlaps(a: torch.Tensor, buf: torch.Tensor) -> bool:
    """Whether `a`'s storage range meets contiguous `buf`'s."""
    lo, hi = buf.data_ptr(), buf.data_ptr() + buf.numel() * buf.element_size()
    a_lo = a.data_ptr()
    return a.device == buf.device and a_lo < hi and a_lo + a.numel() * a.element_size() > lo
