"""`DecodeGraphs.stage`: the static buffers a replay reads, on CPU tensors (no capture needed)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import torch

from deltaserve.engine.graph import DecodeGraphs

MAX_BS, WIDTH = 8, 6


def _graphs() -> DecodeGraphs:
    config = SimpleNamespace(max_model_len=16 * WIDTH, block_size=16)
    runner = SimpleNamespace(
        device=torch.device("cpu"), max_blocks_per_seq=WIDTH, config=config, backend=None, vocab_size=1000
    )
    return DecodeGraphs(runner, MAX_BS)


def _check(g: DecodeGraphs, size: int, batch: dict) -> None:
    """What the replay of `size` reads: the real rows, then padding rows (slot -1, page 0, length 1)."""
    b, pad = len(batch["ids"]), size - len(batch["ids"])
    ids, positions, slot_mapping, seq_lens, slots = g._rows(size)  # the views the graph of `size` reads
    assert ids.tolist() == batch["ids"] + [0] * pad
    assert positions.tolist() == batch["positions"] + [0] * pad
    assert slot_mapping.tolist() == batch["slot_mapping"] + [-1] * pad
    assert seq_lens.tolist() == batch["seq_lens"] + [1] * pad
    assert slots.tolist() == batch["slots"] + [-1] * pad
    batch_view = g._batch(size)  # what the captured forward was given
    assert batch_view.positions.data_ptr() == positions.data_ptr()
    assert batch_view.attn.slot_mapping.data_ptr() == slot_mapping.data_ptr()
    assert batch_view.gdn.state_slots.data_ptr() == slots.data_ptr()
    width = max(len(t) for t in batch["tables"])
    want = [t + [0] * (width - len(t)) for t in batch["tables"]] + [[0] * width] * pad
    assert g.block_tables[:size, :width].tolist() == want, (b, size)


def _batch(rng: random.Random, tables: list[list[int]]) -> dict:
    b = len(tables)
    return {
        "ids": [rng.randrange(100) for _ in range(b)],
        "positions": [rng.randrange(100) for _ in range(b)],
        "slot_mapping": [rng.randrange(100) for _ in range(b)],
        "seq_lens": [rng.randrange(1, 100) for _ in range(b)],
        "tables": [list(t) for t in tables],
        "slots": [rng.randrange(MAX_BS) for _ in range(b)],
    }


def test_stage_matches_the_batch_through_growing_shrinking_and_replaced_rows():
    rng = random.Random(0)
    g = _graphs()
    tables = [[rng.randrange(50) for _ in range(rng.randrange(1, 3))] for _ in range(5)]
    for step in range(300):
        what = rng.random()
        if what < 0.4:  # decode steps: some rows gain a page
            for t in tables:
                if len(t) < WIDTH and rng.random() < 0.3:
                    t.append(rng.randrange(50))
        elif what < 0.6 and len(tables) > 1:  # a sequence finishes (later rows move up)
            tables.pop(rng.randrange(len(tables)))
        elif what < 0.8 and len(tables) < MAX_BS:  # one is admitted
            tables.insert(rng.randrange(len(tables) + 1), [rng.randrange(50)])
        elif what < 0.9:  # one is replaced by another of the same length
            i = rng.randrange(len(tables))
            tables[i] = [rng.randrange(50) for _ in tables[i]]
        if step % 37 == 0:  # a benchmark replay overwrites the device tables
            g.block_tables.fill_(7)
            g._tables_on_device = (0, 0)
        batch = _batch(rng, tables)
        size = g.stage(**batch)
        assert size == next(s for s in g.sizes if s >= len(tables))
        _check(g, size, batch)


def test_stage_skips_the_table_copy_when_no_row_changed():
    g = _graphs()
    batch = _batch(random.Random(1), [[1, 2], [3]])
    g.stage(**batch)
    g.block_tables[0, 0] = 99  # not rewritten: the tables did not change
    g.stage(**batch)
    assert g.block_tables[0, 0].item() == 99
    batch["tables"][1].append(4)
    g.stage(**batch)
    _check(g, 2, batch)


def test_keep_ids_stages_everything_but_the_ids():
    g = _graphs()
    rng = random.Random(2)
    batch = _batch(rng, [[1], [2, 3], [4]])
    size = g.stage(**batch)
    ids = g.greedy_ids(size)
    ids.copy_(torch.tensor([70, 71, 72, 73]))  # what a replay's in-graph argmax leaves there
    nxt = _batch(rng, [[1], [2, 3], [4, 5]])
    assert g.stage(**nxt, keep_ids=True) == size
    assert ids.tolist() == [70, 71, 72, 73]  # the padding row's too: ids are never read back as output
    _, positions, slot_mapping, seq_lens, slots = g._rows(size)
    assert positions.tolist() == nxt["positions"] + [0]
    assert slot_mapping.tolist() == nxt["slot_mapping"] + [-1]
    assert seq_lens.tolist() == nxt["seq_lens"] + [1]
    assert slots.tolist() == nxt["slots"] + [-1]
    assert g.block_tables[:size, :2].tolist() == [[1, 0], [2, 3], [4, 5], [0, 0]]


def test_each_size_reads_its_own_contiguous_block():
    g = _graphs()
    for size in g.sizes:
        views = g._rows(size)
        assert all(v.shape == (size,) for v in views)
        spans = sorted((v.data_ptr(), v.data_ptr() + v.numel() * v.element_size()) for v in views)
        base = g.words.data_ptr()
        assert spans[0][0] == base and spans[-1][1] == base + 4 * size * 8  # exactly words[:4s]
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # no gap, no overlap
        assert g._rows(size)[0].data_ptr() == base + 3 * size * 8  # ids last: a 3s-word copy keeps them


def test_timing_rows_are_padding_with_distinct_token_ids():
    """`time_replay`'s rows touch no state or KV, and their ids differ (a MoE routes them apart)."""
    g = _graphs()
    _, positions, slot_mapping, seq_lens, slots = g._rows(MAX_BS)
    g._stage_timing_rows(MAX_BS)
    ids = g._rows(MAX_BS)[0].tolist()
    assert len(set(ids)) == MAX_BS and all(0 <= i < 1000 for i in ids)
    assert slot_mapping.tolist() == [-1] * MAX_BS and slots.tolist() == [-1] * MAX_BS
    assert seq_lens.tolist() == [1] * MAX_BS and positions.tolist() == [0] * MAX_BS
    assert not g.block_tables.any()
    g._stage_timing_rows(MAX_BS)
    assert g._rows(MAX_BS)[0].tolist() == ids  # the same rows every time (seeded)


def test_time_replay_restages_the_ids_before_every_replay(monkeypatch):
    """A replay writes its argmax over the ids it read; every timed replay must still see the seeded
    distinct ids, not the previous replay's tokens."""

    class FakeEvent:
        def __init__(self, enable_timing: bool = False) -> None:
            pass

        def record(self) -> None:
            pass

        def synchronize(self) -> None:
            pass

        def elapsed_time(self, other) -> float:
            return 1.0

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    g = _graphs()
    seen = []

    class FakeGraph:
        def replay(self) -> None:
            ids = g._rows(MAX_BS)[0]
            seen.append(ids.tolist())
            ids.fill_(7)  # the in-graph argmax: one token in every row

    g.graphs = {MAX_BS: FakeGraph()}
    assert g.time_replay(MAX_BS, iters=3) == 1.0
    g._stage_timing_rows(MAX_BS)
    want = g._rows(MAX_BS)[0].tolist()
    assert len(set(want)) == MAX_BS and seen == [want] * 3
