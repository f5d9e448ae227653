"""Hybrid cache bookkeeping: paged KV blocks (full-attention layers) and GDN state slots.

Pure Python, no tensors: `BlockManager` (KV pages, free list), `SlotPool` (GDN conv + recurrent
state slots, one per running sequence) and `HybridCache` (both, plus the integrity check). The
tensors themselves live in `deltaserve.backends.StateTensors`, sized by `plan_cache`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

_ELEM_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class CacheError(RuntimeError):
    """Broken cache bookkeeping (double free, leak, double ownership)."""


class _Pool:
    """A free list of integer ids `0..size-1` with ownership tracking."""

    what = "item"

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"size: must be >= 0, got {size}")
        self.size = size
        self._free: deque[int] = deque(range(size))
        self._used: set[int] = set()

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return len(self._used)

    def usage(self) -> float:
        return self.num_used / self.size if self.size else 0.0

    def can_allocate(self, n: int) -> bool:
        return n <= len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise CacheError(f"cannot allocate {n} {self.what}s: {len(self._free)} free of {self.size}")
        out = [self._free.popleft() for _ in range(n)]
        self._used.update(out)
        return out

    def free(self, ids: Iterable[int]) -> None:
        for i in ids:
            if i not in self._used:
                raise CacheError(f"{self.what} {i} freed but not allocated (double free?)")
            self._used.remove(i)
            self._free.append(i)

    def check(self, owned: list[int]) -> None:
        """Raise `CacheError` unless `owned` (ids held by live owners) == allocated, with no duplicates."""
        if len(set(owned)) != len(owned):
            dup = sorted({i for i in owned if owned.count(i) > 1})
            raise CacheError(f"{self.what}s owned twice: {dup}")
        if set(owned) != self._used:
            leaked = sorted(self._used - set(owned))
            foreign = sorted(set(owned) - self._used)
            raise CacheError(f"{self.what}s leaked (allocated, unowned): {leaked}; owned but free: {foreign}")
        if len(set(self._free)) != len(self._free) or set(self._free) & self._used:
            raise CacheError(f"{self.what} free list is corrupt")
        if len(self._free) + len(self._used) != self.size:
            raise CacheError(
                f"{self.what}s lost: {len(self._free)} free + {len(self._used)} used != {self.size}"
            )


class BlockManager(_Pool):
    """KV pages of `block_size` tokens; a sequence of `n` cached tokens holds `ceil(n / block_size)`."""

    what = "block"

    def __init__(self, num_blocks: int, block_size: int) -> None:
        super().__init__(num_blocks)
        if block_size <= 0:
            raise ValueError(f"block_size: must be positive, got {block_size}")
        self.block_size = block_size

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)


class SlotPool(_Pool):
    """GDN state slots (conv state + recurrent state in every GDN layer)."""

    what = "slot"


@dataclass(frozen=True)
class CacheSpec:
    """Bytes of one KV page and one GDN slot for a model at given dtypes."""

    block_bytes: int  # K and V of one page in every full-attention layer
    slot_bytes: int  # conv + recurrent state of one sequence in every GDN layer
    block_size: int

    @classmethod
    def for_model(cls, config, *, block_size: int, dtype: str, ssm_dtype: str) -> CacheSpec:
        """`config` is a `ModelConfig`."""
        e, es = _ELEM_BYTES[dtype], _ELEM_BYTES[ssm_dtype]
        n_full, n_lin = len(config.full_layers), len(config.linear_layers)
        block = 2 * n_full * block_size * config.num_key_value_heads * config.head_dim * e
        conv = config.conv_dim * (config.linear_conv_kernel_dim - 1) * e
        ssm = config.linear_num_value_heads * config.linear_key_head_dim * config.linear_value_head_dim * es
        return cls(block_bytes=block, slot_bytes=n_lin * (conv + ssm), block_size=block_size)


@dataclass(frozen=True)
class CachePlan:
    num_slots: int
    num_blocks: int
    budget_bytes: int
    note: str = ""  # why fewer slots than max_num_seqs, if so


def plan_cache(
    spec: CacheSpec,
    budget_bytes: int,
    *,
    max_num_seqs: int,
    max_model_len: int,
    num_blocks_override: int | None = None,
) -> CachePlan:
    """Split one byte budget between GDN slots and KV pages.

    Slots come first (one per running sequence, up to `max_num_seqs`), but never so many that the
    pages left could not hold one sequence of `max_model_len` tokens; the rest becomes KV pages, at
    most enough for every slot to hold a `max_model_len` sequence. When
    fewer than `max_num_seqs` slots fit, the plan says so in `note` (the scheduler runs fewer at once).
    Raises `ValueError` with the numbers when not even one sequence fits.
    """
    one_seq_blocks = -(-max_model_len // spec.block_size)
    min_kv = one_seq_blocks * spec.block_bytes
    if num_blocks_override is not None:
        min_kv = num_blocks_override * spec.block_bytes
    room = budget_bytes - min_kv
    if room < spec.slot_bytes:
        raise ValueError(
            f"cache budget {budget_bytes / 2**20:.1f} MiB cannot hold one sequence: one GDN state slot is "
            f"{spec.slot_bytes / 2**20:.2f} MiB and max_model_len={max_model_len} needs {one_seq_blocks} KV "
            f"pages of {spec.block_bytes / 2**20:.3f} MiB ({min_kv / 2**20:.1f} MiB); raise the memory "
            "budget (gpu_memory_utilization / cpu_cache_bytes) or lower max_model_len"
        )
    num_slots = min(max_num_seqs, room // spec.slot_bytes) if spec.slot_bytes else max_num_seqs
    note = ""
    if num_slots < max_num_seqs:
        note = (
            f"only {num_slots} GDN state slots fit the cache budget (max_num_seqs={max_num_seqs}); "
            f"at most {num_slots} sequences will run at once"
        )
    if num_blocks_override is not None:
        num_blocks = num_blocks_override
    else:
        rest = budget_bytes - num_slots * spec.slot_bytes
        num_blocks = rest // spec.block_bytes if spec.block_bytes else one_seq_blocks
        # pages beyond every slot holding a full-length sequence could never be used
        num_blocks = min(num_blocks, num_slots * one_seq_blocks)
    return CachePlan(
        num_slots=int(num_slots), num_blocks=int(num_blocks), budget_bytes=budget_bytes, note=note
    )


class HybridCache:
    """Both pools; sequences hold `seq.slot` and `seq.blocks`."""

    def __init__(self, num_slots: int, num_blocks: int, block_size: int) -> None:
        self.slots = SlotPool(num_slots)
        self.blocks = BlockManager(num_blocks, block_size)
        self.block_size = block_size

    def blocks_needed(self, seq, num_tokens: int) -> int:
        """More pages `seq` needs to hold `num_tokens` cached tokens."""
        return max(0, self.blocks.blocks_for(num_tokens) - len(seq.blocks))

    def can_admit(self, seq, num_tokens: int) -> bool:
        return self.slots.num_free > 0 and self.blocks.can_allocate(self.blocks_needed(seq, num_tokens))

    def admit(self, seq) -> None:
        if seq.slot is not None:
            raise CacheError(f"sequence {seq.seq_id} already holds slot {seq.slot}")
        (seq.slot,) = self.slots.allocate(1)

    def grow(self, seq, num_tokens: int) -> bool:
        """Give `seq` pages for `num_tokens` cached tokens; False (nothing taken) if they are not free."""
        if len(seq.blocks) * self.block_size >= num_tokens:
            return True  # the common decode step: the last page still has room
        need = self.blocks_needed(seq, num_tokens)
        if not self.blocks.can_allocate(need):
            return False
        seq.blocks.extend(self.blocks.allocate(need))
        return True

    def release(self, seq) -> None:
        """Return everything `seq` holds (idempotent)."""
        if seq.blocks:
            self.blocks.free(seq.blocks)
            seq.blocks = []
        if seq.slot is not None:
            self.slots.free([seq.slot])
            seq.slot = None

    def usage(self) -> float:
        """KV page usage in [0, 1] (the `kv_cache_usage` gauge)."""
        return self.blocks.usage()

    def check_integrity(self, seqs: Iterable) -> None:
        """Raise `CacheError` unless the live sequences own exactly the allocated pages and slots."""
        seqs = list(seqs)
        self.blocks.check([b for s in seqs for b in s.blocks])
        self.slots.check([s.slot for s in seqs if s.slot is not None])
