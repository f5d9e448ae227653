"""`ModelRunner`: model + cache tensors; turns one `SchedulerOutput` into one forward and one sample.

Rows of a step are laid out decodes first (the scheduler's order). Only the rows that sample (the
last token of a sequence that is caught up) get logits, plus, for requests that ask for prompt
logprobs, the prefill rows whose next prompt token still lacks its logprob. A decode-only step
without prompt-logprob rows whose size fits a captured CUDA graph replays it (padded to the
captured size); everything else runs eagerly.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch

from deltaserve.backends import OpsBackend, allocate_state_tensors
from deltaserve.config import EngineConfig
from deltaserve.context import AttentionMetadata, ForwardBatch, GDNMetadata
from deltaserve.engine.cache import CachePlan, CacheSpec, plan_cache
from deltaserve.engine.graph import DecodeGraphs
from deltaserve.engine.sampler import SamplerOutput, SamplingBatch, prompt_logprobs, sample
from deltaserve.engine.scheduler import SchedulerOutput
from deltaserve.engine.transfer import host_to_device, to_device
from deltaserve.models.registry import load_model

logger = logging.getLogger("deltaserve.engine")


@dataclass
class StepResult:
    """Host-side results for the sampling rows, in schedule order."""

    token_ids: list[int]
    sampled_logprob: list[float] | None = None
    sampled_rank: list[int] | None = None
    top_logprobs: list[list[float]] | None = None
    top_ids: list[list[int]] | None = None
    prompt: list[PromptChunk] = field(default_factory=list)  # prompt logprobs computed this step


@dataclass
class LaunchedStep:
    """A step whose forward and sampling are enqueued on the device (`ModelRunner.collect` waits)."""

    token_ids: torch.Tensor | None = None  # [N] int64 on the device: sampled ids, schedule order
    host: torch.Tensor | None = None  # [N] int64, or [N, 3 + 2K] float64 with logprobs (filling)
    event: Any = None  # torch.cuda.Event recorded after the copy into `host` (None on the CPU)
    top_k: int = -1  # K of the packed logprob layout; -1: `host` holds token ids only
    prompt: list[PromptChunk] = field(default_factory=list)  # prompt logprobs (already on the host)


@dataclass
class PromptChunk:
    """Prompt logprobs of one request's prompt tokens `[start, start + len(token_logprob))`."""

    request: Any
    start: int
    token_logprob: list[float]
    rank: list[int]
    top_ids: list[list[int]]  # [M][K] (K = the request's prompt_logprobs; empty lists when 0)
    top_logprobs: list[list[float]]


@dataclass
class _PromptPlan:
    """Which rows of a step's hidden states feed prompt logprobs, and for whom."""

    rows: list[int] = field(default_factory=list)  # flat token rows, request after request
    targets: list[int] = field(default_factory=list)  # the prompt token each row predicts
    spans: list[tuple[Any, int, int]] = field(default_factory=list)  # (request, first token, count)


def _torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def seed_for(seed: int, index: int) -> int:
    """Generator seed of continuation `index` of a request seeded with `seed` (stable across runs)."""
    if index == 0:
        return seed
    return ((seed << 32) + zlib.crc32(f"{seed}:{index}".encode())) & 0x7FFF_FFFF_FFFF_FFFF


class ModelRunner:
    def __init__(self, config: EngineConfig, *, model: torch.nn.Module | None = None) -> None:
        self.config = config
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)
        self.dtype = _torch_dtype(config.dtype)
        torch.manual_seed(config.seed)
        t0 = time.perf_counter()
        self.model = (
            model if model is not None else load_model(config.model, dtype=self.dtype, device=self.device)
        )
        self.model_config = self.model.config
        self.vocab_size = self.model_config.vocab_size
        self.eos_ids: tuple[int, ...] = tuple(self.model_config.eos_token_id)  # the engine may override
        self.load_time_s = time.perf_counter() - t0
        self.spec = CacheSpec.for_model(
            self.model_config, block_size=config.block_size, dtype=config.dtype, ssm_dtype=config.ssm_dtype
        )
        self.plan = self._plan_cache()
        if self.plan.note:
            logger.warning(self.plan.note)
        self.states = allocate_state_tensors(
            self.model_config,
            num_slots=self.plan.num_slots,
            num_blocks=self.plan.num_blocks,
            block_size=config.block_size,
            dtype=self.dtype,
            device=self.device,
            ssm_dtype=_torch_dtype(config.ssm_dtype),
        )
        self.backend = OpsBackend(self.states)
        self.max_blocks_per_seq = -(-config.max_model_len // config.block_size)
        self._sampling: SamplingBatch | None = None  # the last step's (its parameter tensors are reused)
        self.graphs: DecodeGraphs | None = None
        self.graph_error: str | None = None
        if config.use_cuda_graphs:
            self.graphs = DecodeGraphs(self, max_bs=min(config.cuda_graph_max_bs, self.plan.num_slots))
            try:
                self.graphs.capture()
            except Exception as exc:  # a non-graph-safe op (e.g. the reference MoE): run eagerly
                logger.warning("CUDA graphs disabled, running decode eagerly: %s", str(exc)[:500])
                self.graph_error = str(exc)[:500]
                self.graphs = None
                torch.cuda.synchronize(self.device)

    # ---- memory ------------------------------------------------------------------------------
    def _plan_cache(self) -> CachePlan:
        c = self.config
        if self.device.type != "cuda":
            budget = c.cpu_cache_bytes
        else:
            budget = self._measure_gpu_budget()
        plan = plan_cache(
            self.spec,
            budget,
            max_num_seqs=c.max_num_seqs,
            max_model_len=c.max_model_len,
            num_blocks_override=c.num_kv_blocks,
        )
        logger.info(
            "cache: %d GDN slots x %.2f MiB + %d KV pages x %d tokens x %.3f MiB (budget %.1f MiB)",
            plan.num_slots,
            self.spec.slot_bytes / 2**20,
            plan.num_blocks,
            c.block_size,
            self.spec.block_bytes / 2**20,
            budget / 2**20,
        )
        return plan

    @torch.no_grad()
    def _measure_gpu_budget(self) -> int:
        """Cache bytes = utilisation x total - (everything in use now) - peak activations - reserve.

        The activation peak is measured by one forward of `max_num_batched_tokens` tokens plus logits
        and a sort for `max_num_seqs` rows, on a throw-away cache just big enough for it.
        """
        from deltaserve import env

        c = self.config
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        tokens = c.max_num_batched_tokens
        tmp = allocate_state_tensors(
            self.model_config,
            num_slots=1,
            num_blocks=-(-tokens // c.block_size),
            block_size=c.block_size,
            dtype=self.dtype,
            device=self.device,
            ssm_dtype=_torch_dtype(c.ssm_dtype),
        )
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        backend = OpsBackend(tmp)
        batch = self._eager_batch(
            positions=list(range(tokens)),
            cu=[0, tokens],
            seq_lens=[tokens],
            slot_mapping=list(range(tokens)),
            tables=[list(range(-(-tokens // c.block_size)))],
            slots=[0],
            has_init=[False],
            max_q=tokens,
            backend=backend,
        )
        ids = torch.zeros(tokens, dtype=torch.long, device=self.device)
        try:
            hidden = self.model(ids, batch)  # [T, H]
        except ValueError as exc:  # an op refusing this model/dtype on this device: say which setting
            raise ValueError(
                f"dtype={c.dtype!r} on {c.device}: the model's first forward failed: {exc}"
            ) from exc
        rows = min(tokens, c.max_num_seqs)
        logits = self.model.compute_logits(hidden[:rows])  # [N, V]
        logits.sort(dim=-1, descending=True)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - base
        del hidden, logits, batch, backend, tmp
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        reserve = env.get("DELTASERVE_GRAPH_MEMORY_RESERVE_MIB") * 2**20 if c.use_cuda_graphs else 0
        budget = int(total * c.gpu_memory_utilization) - (total - free) - peak - reserve
        logger.info(
            "memory: total %.1f GiB, in use %.1f GiB, activation peak %.2f GiB, graph reserve %.2f GiB"
            " -> cache budget %.2f GiB",
            total / 2**30,
            (total - free) / 2**30,
            peak / 2**30,
            reserve / 2**30,
            budget / 2**30,
        )
        if budget <= 0:
            raise ValueError(
                f"gpu_memory_utilization={c.gpu_memory_utilization} leaves no room for the cache: "
                f"{(total - free) / 2**30:.1f} GiB in use and {peak / 2**30:.2f} GiB activation peak "
                f"of {total / 2**30:.1f} GiB; raise it or lower max_num_batched_tokens"
            )
        return budget

    # ---- batch construction ------------------------------------------------------------------
    def _eager_batch(
        self,
        *,
        positions: list[int],
        cu: list[int],
        seq_lens: list[int],
        slot_mapping: list[int],
        tables: list[list[int]],
        slots: list[int],
        has_init: list[bool],
        max_q: int,
        backend: OpsBackend,
        decode_only: bool = False,
    ) -> ForwardBatch:
        dev = self.device
        width = max(1, max(len(t) for t in tables))
        table = torch.tensor([row + [0] * (width - len(row)) for row in tables], dtype=torch.int32)  # [B, W]

        def put(values: list, dtype: torch.dtype) -> torch.Tensor:
            return to_device(values, dtype, dev)

        return ForwardBatch(
            positions=put(positions, torch.int64),
            cu_seqlens=put(cu, torch.int32),
            seq_lens=put(seq_lens, torch.int32),
            num_seqs=len(seq_lens),
            max_query_len=max_q,
            max_seq_len=max(seq_lens),
            attn=AttentionMetadata(
                block_tables=host_to_device(table, dev),
                slot_mapping=put(slot_mapping, torch.int64),
                block_size=self.config.block_size,
            ),
            gdn=GDNMetadata(
                state_slots=put(slots, torch.int32),
                has_initial_state=put(has_init, torch.bool),
                decode_only=decode_only,
            ),
            attn_backend=backend,
            gdn_backend=backend,
        )

    def make_generator(self, seed: int) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        return gen

    # ---- one step ----------------------------------------------------------------------------
    @torch.no_grad()
    def execute(self, out: SchedulerOutput) -> StepResult:
        """Run the scheduled tokens; sample the rows that are caught up; compute wanted prompt logprobs."""
        return self.collect(self.launch(out))

    @torch.no_grad()
    def launch(self, out: SchedulerOutput, *, input_ids: torch.Tensor | None = None) -> LaunchedStep:
        """Enqueue the forward and the sampling of one step without waiting for the device; `collect`
        gives its results. `input_ids` ([B] int64 on the device, e.g. the previous step's
        `LaunchedStep.token_ids`) replaces the host token ids of an all-decode step whose last tokens
        the host does not know yet (row i: `out.scheduled[i]`)."""
        logits, sample_seqs, prompt, greedy = self._forward(out, allow_graph=True, input_ids=input_ids)
        step = self._sample(logits, sample_seqs, input_ids, greedy) if logits is not None else LaunchedStep()
        step.prompt = prompt
        return step

    def collect(self, step: LaunchedStep) -> StepResult:
        """Wait for `step`'s sampled rows to reach the host (the step's one device->host transfer)."""
        if step.host is None:
            return StepResult(token_ids=[], prompt=step.prompt)
        if step.event is not None:
            step.event.synchronize()  # only this step's copy: a step launched after it keeps running
        if step.top_k < 0:
            return StepResult(token_ids=step.host.tolist(), prompt=step.prompt)
        rows = step.host.tolist()  # [N, 3 (+ 2K)]
        k = step.top_k
        result = StepResult(
            token_ids=[int(r[0]) for r in rows],
            sampled_logprob=[r[1] for r in rows],
            sampled_rank=[int(r[2]) for r in rows],
            prompt=step.prompt,
        )
        if k:
            result.top_ids = [[int(x) for x in r[3 : 3 + k]] for r in rows]
            result.top_logprobs = [r[3 + k :] for r in rows]
        return result

    def _sample(
        self,
        logits: torch.Tensor,
        sample_seqs: list,
        in_flight: torch.Tensor | None,
        greedy: torch.Tensor | None = None,
    ) -> LaunchedStep:
        """Enqueue the sampling of `logits [N, V]`; `greedy` ([N], when the decode graph computed it)
        is `logits.argmax(-1)`, taken as is when every row is plain greedy.

        `in_flight` may be the previous replay's greedy rows, which this step's replay has already
        overwritten. Only penalties read its values, and a batch with penalties is never plain greedy,
        so its ids came from `sample` instead. Requests' sampling parameters do not change while
        they run."""
        sb = SamplingBatch.build(
            sample_seqs, self.vocab_size, self.device, self.eos_ids, self._sampling, in_flight=in_flight
        )
        self._sampling = sb
        so = SamplerOutput(token_ids=greedy) if greedy is not None and sb.plain_greedy else sample(logits, sb)
        if so.sampled_logprob is None:
            packed, k = so.token_ids, -1  # [N] int64
        else:  # logprobs wanted: pack everything into one float64 transfer (ids are exact below 2**53)
            cols = [so.token_ids[:, None], so.sampled_logprob[:, None], so.sampled_rank[:, None]]
            k = 0
            if so.top_logprobs is not None:
                cols += [so.top_ids, so.top_logprobs]
                k = so.top_ids.shape[1]
            packed = torch.cat([c.to(torch.float64) for c in cols], dim=1)  # [N, 3 (+ 2K)]
        host, event = packed, None
        if packed.device.type == "cuda":
            # pinned, so the copy is asynchronous; the caching host allocator keeps the block until
            # the copy is done even if `host` is dropped earlier
            host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            host.copy_(packed, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        return LaunchedStep(token_ids=so.token_ids, host=host, event=event, top_k=k)

    def _prompt_logprobs(self, hidden: torch.Tensor, plan: _PromptPlan) -> list[PromptChunk]:
        """Prompt logprobs from `hidden [T, H]`, computing logits `max_num_seqs` rows at a time so the
        activation peak stays that of sampling (which the memory plan measured)."""
        k = max(s[0].params.prompt_logprobs for s in plan.spans)
        step = max(1, self.config.max_num_seqs)
        packed: list[list[float]] = []
        for lo in range(0, len(plan.rows), step):
            rows = to_device(plan.rows[lo : lo + step], torch.int64, self.device)
            targets = to_device(plan.targets[lo : lo + step], torch.int64, self.device)
            logits = self.model.compute_logits(hidden.index_select(0, rows))  # [M, V]
            pl = prompt_logprobs(logits, targets, k)
            cols = [pl.token_logprob[:, None], pl.rank[:, None]]
            if pl.top_ids is not None:
                cols += [pl.top_ids, pl.top_logprobs]
            packed += torch.cat([c.to(torch.float64) for c in cols], dim=1).tolist()  # [M, 2 (+ 2K)]
        chunks, at = [], 0
        for req, start, count in plan.spans:
            rows = packed[at : at + count]
            at += count
            n = req.params.prompt_logprobs
            chunks.append(
                PromptChunk(
                    request=req,
                    start=start,
                    token_logprob=[r[0] for r in rows],
                    rank=[int(r[1]) for r in rows],
                    top_ids=[[int(x) for x in r[2 : 2 + n]] for r in rows],
                    top_logprobs=[r[2 + k : 2 + k + n] for r in rows],
                )
            )
        return chunks

    @torch.no_grad()
    def forward_logits(
        self, out: SchedulerOutput, *, allow_graph: bool = True
    ) -> tuple[torch.Tensor | None, list]:
        """One forward over the scheduled tokens: fp32 logits `[N, V]` of the N sampling rows (in
        schedule order) and their sequences; `(None, [])` when no row samples. Updates the cache
        (and drops any prompt logprobs; `execute` returns those)."""
        logits, seqs, _, _ = self._forward(out, allow_graph=allow_graph)
        return logits, seqs

    def _forward(
        self, out: SchedulerOutput, *, allow_graph: bool, input_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, list, list[PromptChunk], torch.Tensor | None]:
        """`(logits [N, V] of the sampling rows or None, their sequences, prompt logprobs, the rows'
        argmax [N] when the decode graph computed it or None)`."""
        bs = self.config.block_size
        ids: list[int] = []
        positions: list[int] = []
        slot_mapping: list[int] = []
        cu = [0]
        seq_lens: list[int] = []
        tables: list[list[int]] = []
        slots: list[int] = []
        has_init: list[bool] = []
        logit_rows: list[int] = []
        sample_seqs = []
        plan = _PromptPlan()
        max_q = 0
        for entry in out.scheduled:
            seq, n = entry.seq, entry.num_new
            start, end = seq.num_computed, seq.num_computed + n
            blocks = seq.blocks
            if n == 1:  # a decode row: skip the range/generator machinery
                ids.append(seq.token_at(start) if input_ids is None else 0)
                positions.append(start)
                slot_mapping.append(blocks[start // bs] * bs + start % bs)
            else:
                ids.extend(seq.tokens(start, end))
                positions.extend(range(start, end))
                slot_mapping.extend(blocks[p // bs] * bs + p % bs for p in range(start, end))
            cu.append(cu[-1] + n)
            seq_lens.append(end)
            tables.append(blocks)
            slots.append(seq.slot)
            has_init.append(start > 0)
            max_q = max(max_q, n)
            if entry.sample:
                logit_rows.append(cu[-1] - 1)
                sample_seqs.append(seq)
            if seq.request.prompt_logprobs is not None and seq.index == 0:
                lo, hi = seq.request.prompt_logprob_targets(start, end)
                if lo < hi:  # token k is predicted by the row of position k - 1
                    plan.rows.extend(range(cu[-2] + lo - 1 - start, cu[-2] + hi - 1 - start))
                    plan.targets.extend(seq.prompt_ids[lo:hi])
                    plan.spans.append((seq.request, lo, hi - lo))
        decode_only = max_q == 1 and all(has_init)
        num_seqs = len(seq_lens)
        graph_ok = allow_graph and not plan.rows and self.graphs is not None
        if input_ids is not None and (not decode_only or len(ids) != input_ids.shape[0]):
            raise ValueError("input_ids: device token ids are only for an all-decode step, one per row")
        if graph_ok and decode_only and self.graphs.fits(num_seqs):
            logits, greedy = self.graphs.run(
                ids, positions, slot_mapping, seq_lens, tables, slots, input_ids=input_ids
            )
            return logits, sample_seqs, [], greedy
        batch = self._eager_batch(
            positions=positions,
            cu=cu,
            seq_lens=seq_lens,
            slot_mapping=slot_mapping,
            tables=tables,
            slots=slots,
            has_init=has_init,
            max_q=max_q,
            backend=self.backend,
            decode_only=decode_only,
        )
        if input_ids is None:
            input_ids = to_device(ids, torch.int64, self.device)  # [T]
        hidden = self.model(input_ids, batch)  # [T, H]
        prompt = self._prompt_logprobs(hidden, plan) if plan.rows else []
        if not sample_seqs:
            return None, [], prompt, None
        if len(logit_rows) != hidden.shape[0]:
            rows = to_device(logit_rows, torch.int64, self.device)
            hidden = hidden.index_select(0, rows)  # [N, H]
        return self.model.compute_logits(hidden), sample_seqs, prompt, None  # [N, V]
