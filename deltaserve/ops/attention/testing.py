"""Random paged-attention inputs for tests and benchmarks (not used by the serving path)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PagedCase:
    """One batch: queries, a paged cache holding every sequence's context, and its metadata.

    ``keys[b]``/``values[b]`` are the contiguous ``[seq_len, Hkv, D]`` contexts that were paged into
    the cache (an oracle independent of the paging). Unused cache slots and the padding entries of
    ``block_tables`` (which point at an extra poison block) hold NaN when ``poison`` was set.
    """

    q: torch.Tensor  # [T, Hq, D]
    gate: torch.Tensor | None  # [T, Hq, D]
    k_cache: torch.Tensor  # [NB, BS, Hkv, D]
    v_cache: torch.Tensor  # [NB, BS, Hkv, D]
    block_tables: torch.Tensor  # [B, MB] int32
    cu_seqlens_q: torch.Tensor  # [B+1] int32
    seq_lens: torch.Tensor  # [B] int32
    q_lens: list[int]
    seq_lens_list: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    scale: float


def make_paged_case(
    q_lens: list[int],
    seq_lens: list[int],
    *,
    hq: int,
    hkv: int,
    d: int,
    block_size: int,
    dtype: torch.dtype = torch.float32,
    cache_dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    gate: bool = True,
    seed: int = 0,
    poison: bool = True,
    pad_rows: int = 0,
    interleaved_kv: bool = False,
    extra_blocks: int = 0,
) -> PagedCase:
    """Build a random paged batch. Pages are assigned in a shuffled order; ``pad_rows`` adds query
    rows past ``cu_seqlens_q[-1]``; ``interleaved_kv`` makes K and V strided views of one
    ``[NB, BS, 2, Hkv, D]`` pool."""
    if len(q_lens) != len(seq_lens) or any(ql > sl for ql, sl in zip(q_lens, seq_lens)):
        raise ValueError("q_lens must match seq_lens in length and be elementwise <= seq_lens")
    cache_dtype = cache_dtype or dtype
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    n_pages = [(sl + block_size - 1) // block_size for sl in seq_lens]
    nb = sum(n_pages) + 1 + extra_blocks  # one poison block for the table padding
    max_blocks = max([*n_pages, 1])
    fill = float("nan") if poison else 0.0
    pool = torch.full((nb, block_size, 2, hkv, d), fill, dtype=torch.float32)
    if interleaved_kv:
        pool = pool.to(device=device, dtype=cache_dtype)
        k_cache, v_cache = pool[:, :, 0], pool[:, :, 1]  # [NB, BS, Hkv, D] strided views
    else:
        k_cache = pool[:, :, 0].contiguous().to(device=device, dtype=cache_dtype)
        v_cache = pool[:, :, 1].contiguous().to(device=device, dtype=cache_dtype)
    perm = torch.randperm(nb, generator=gen).tolist()
    poison_block = perm.pop()
    tables = torch.full((len(seq_lens), max_blocks), poison_block, dtype=torch.int32)
    keys, values = [], []
    for b, sl in enumerate(seq_lens):
        k = rand(sl, hkv, d).to(cache_dtype)  # [L, Hkv, D]
        v = rand(sl, hkv, d).to(cache_dtype)  # [L, Hkv, D]
        keys.append(k)
        values.append(v)
        for p in range(n_pages[b]):
            blk = perm.pop()
            tables[b, p] = blk
            n = min(block_size, sl - p * block_size)
            k_cache[blk, :n] = k[p * block_size : p * block_size + n]
            v_cache[blk, :n] = v[p * block_size : p * block_size + n]
    t = sum(q_lens) + pad_rows
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    return PagedCase(
        q=rand(t, hq, d),
        gate=rand(t, hq, d) if gate else None,
        k_cache=k_cache,
        v_cache=v_cache,
        block_tables=tables.to(device),
        cu_seqlens_q=cu.to(device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        q_lens=list(q_lens),
        seq_lens_list=list(seq_lens),
        keys=keys,
        values=values,
        scale=d**-0.5,
    )
