"""Batched sampling on the logits device: one call per step, no host sync inside.

`SamplingBatch.build` turns the sampling rows' parameters into a few device tensors (the float
parameters in one small host->device copy, reused while the batch's sequences stay the same); `sample`
applies, in order: min_tokens bans, repetition / presence /
frequency penalties, temperature, top-k, top-p, min-p, then draws with per-row exponential noise
(`argmax(p / q)`, `q ~ Exp(1)`), seeded rows drawing their noise from their own generator so a
seeded request gets the same tokens whatever else is in the batch. Greedy rows take the argmax of
the penalised logits; an all-greedy batch without penalties is a single argmax.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from deltaserve.engine.transfer import to_device

_NEG_INF = float("-inf")


@dataclass
class SamplingBatch:
    """Per-row sampling parameters of one step (`N` rows, vocabulary `V`)."""

    all_greedy: bool
    greedy: torch.Tensor | None  # [N] bool (None when no row, or every row, is greedy)
    temperature: torch.Tensor | None  # [N] fp32 (1.0 on greedy rows)
    top_k: torch.Tensor | None  # [N] int64 (V = off)
    top_p: torch.Tensor | None  # [N] fp32
    min_p: torch.Tensor | None  # [N] fp32
    repetition: torch.Tensor | None  # [N] fp32
    presence: torch.Tensor | None  # [N] fp32
    frequency: torch.Tensor | None  # [N] fp32
    seen_ids: torch.Tensor | None  # [N, Lp] int64 prompt+output ids, padded with V (repetition)
    output_ids: torch.Tensor | None  # [N, Lo] int64 output ids, padded with V (presence/frequency)
    ban_rows: torch.Tensor | None  # [K] rows of (row, token) bans (min_tokens)
    ban_cols: torch.Tensor | None  # [K]
    generators: list[tuple[int, torch.Generator]]  # seeded rows
    max_logprobs: int  # largest top-N requested (-1: no row wants logprobs)
    # the sequences it was built for and their rows with min_tokens (lets `build` reuse the rest)
    seqs: tuple = field(default=(), repr=False, compare=False)
    min_token_rows: list[int] = field(default_factory=list, repr=False, compare=False)

    @property
    def plain_greedy(self) -> bool:
        """Every row's token is the argmax of the raw logits: greedy, no penalty, no ban, no logprobs."""
        return (
            self.all_greedy
            and self.repetition is None
            and self.presence is None
            and self.ban_rows is None
            and self.max_logprobs < 0
        )

    @classmethod
    def build(
        cls,
        seqs: list,
        vocab_size: int,
        device: torch.device,
        eos_ids: tuple[int, ...],
        prev: SamplingBatch | None = None,
        in_flight: torch.Tensor | None = None,
    ) -> SamplingBatch:
        """`seqs` are the sampling `Sequence`s in row order. When `prev` was built for the same
        sequence objects in the same order (a steady decode batch), its per-request tensors are
        reused and only the per-step parts (penalty token ids, min_tokens bans) are rebuilt;
        sequences' parameters must not change while they run.

        `in_flight` (`[N]` int64 on `device`, overlap scheduling): each row's newest output token,
        sampled by the step before and not in `output_ids` yet; penalties and min_tokens count it."""
        v = vocab_size
        pending = 0 if in_flight is None else 1
        extra = None if in_flight is None else in_flight.view(-1, 1)  # [N, 1]
        if prev is not None and len(prev.seqs) == len(seqs) and all(a is b for a, b in zip(prev.seqs, seqs)):
            b = copy.copy(prev)
        else:
            b = cls._build_static(seqs, v, device)
        seen = outs = None
        if b.repetition is not None:
            seen = _pad([s.prompt_ids + s.output_ids for s in seqs], v, device)  # [N, Lp]
            if extra is not None:
                seen = torch.cat([seen, extra], dim=1)
        if b.presence is not None:
            outs = _pad([s.output_ids for s in seqs], v, device)  # [N, Lo]
            if extra is not None:
                outs = torch.cat([outs, extra], dim=1)
        rows, cols = [], []
        for i in b.min_token_rows:
            s = seqs[i]
            p = s.params
            if len(s.output_ids) + pending < p.min_tokens:
                banned = set(p.stop_token_ids) | (set() if p.ignore_eos else set(eos_ids))
                for tok in sorted(banned):
                    if 0 <= tok < v:
                        rows.append(i)
                        cols.append(tok)
        ban_rows = ban_cols = None
        if rows:
            ban = to_device([rows, cols], torch.int64, device)  # [2, K]
            ban_rows, ban_cols = ban[0], ban[1]
        b.seen_ids, b.output_ids, b.ban_rows, b.ban_cols = seen, outs, ban_rows, ban_cols
        return b

    @classmethod
    def _build_static(cls, seqs: list, v: int, device: torch.device) -> SamplingBatch:
        """Everything that depends only on the requests' parameters (one host->device copy of the
        float parameters, one of top-k); per-step fields are left empty."""
        ps = [s.params for s in seqs]
        all_greedy = all(p.temperature == 0.0 for p in ps)
        want_top_k = not all_greedy and any(0 < p.top_k < v for p in ps)
        want_top_p = not all_greedy and any(p.top_p < 1.0 for p in ps)
        want_min_p = not all_greedy and any(p.min_p > 0.0 for p in ps)
        want_rep = any(p.repetition_penalty != 1.0 for p in ps)
        want_pf = any(p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 for p in ps)
        floats: list[list[float]] = []  # rows of one fp32 [R, N] transfer

        def row(values: list[float]) -> int:
            floats.append(values)
            return len(floats) - 1

        at: dict[str, int] = {}
        if not all_greedy:
            if any(p.temperature == 0.0 for p in ps):  # else `greedy` stays None: no row to take
                at["greedy"] = row([1.0 if p.temperature == 0.0 else 0.0 for p in ps])
            at["temperature"] = row([p.temperature if p.temperature > 0 else 1.0 for p in ps])
            if want_top_p:
                at["top_p"] = row([p.top_p for p in ps])
            if want_min_p:
                at["min_p"] = row([p.min_p for p in ps])
        if want_rep:
            at["repetition"] = row([p.repetition_penalty for p in ps])
        if want_pf:
            at["presence"] = row([p.presence_penalty for p in ps])
            at["frequency"] = row([p.frequency_penalty for p in ps])
        packed = to_device(floats, torch.float32, device) if floats else None

        def get(name: str) -> torch.Tensor | None:
            return packed[at[name]] if name in at else None  # [N] fp32 (a row view)

        greedy = get("greedy")
        if greedy is not None:
            greedy = greedy != 0.0  # [N] bool
        top_k = None
        if want_top_k:
            top_k = to_device([p.top_k if 0 < p.top_k < v else v for p in ps], torch.int64, device)
        gens = [
            (i, s.generator)
            for i, s in enumerate(seqs)
            if s.generator is not None and s.params.temperature > 0
        ]
        max_lp = max((p.logprobs for p in ps if p.logprobs is not None), default=-1)
        return cls(
            all_greedy, greedy, get("temperature"), top_k, get("top_p"), get("min_p"), get("repetition"),
            get("presence"), get("frequency"), None, None, None, None, gens, max_lp, tuple(seqs),
            [i for i, p in enumerate(ps) if p.min_tokens > 0],
        )  # fmt: skip


def _pad(rows: list[list[int]], pad: int, device: torch.device) -> torch.Tensor:
    width = max(1, max(len(r) for r in rows))
    out = torch.full((len(rows), width), pad, dtype=torch.int64, pin_memory=device.type == "cuda")
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
    return out.to(device, non_blocking=True)  # pinned on CUDA: no wait for the stream (see `transfer`)


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [N] int64
    sampled_logprob: torch.Tensor | None = None  # [N] fp32
    sampled_rank: torch.Tensor | None = None  # [N] int64, 1 = most likely
    top_logprobs: torch.Tensor | None = None  # [N, K] fp32
    top_ids: torch.Tensor | None = None  # [N, K] int64


def _apply_penalties(logits: torch.Tensor, b: SamplingBatch) -> torch.Tensor:
    n, v = logits.shape
    if b.repetition is not None:
        seen = torch.zeros(n, v + 1, dtype=torch.bool, device=logits.device)
        seen.scatter_(1, b.seen_ids, True)
        seen = seen[:, :v]  # [N, V]
        rep = b.repetition[:, None]  # [N, 1]
        penalised = torch.where(logits > 0, logits / rep, logits * rep)
        logits = torch.where(seen, penalised, logits)
    if b.presence is not None:
        counts = torch.zeros(n, v + 1, dtype=logits.dtype, device=logits.device)
        counts.scatter_add_(1, b.output_ids, torch.ones_like(b.output_ids, dtype=logits.dtype))
        counts = counts[:, :v]  # [N, V]
        logits = logits - b.frequency[:, None] * counts - b.presence[:, None] * (counts > 0).to(logits.dtype)
    return logits


def _filter(logits: torch.Tensor, b: SamplingBatch) -> torch.Tensor:
    """Top-k, top-p (on the sorted distribution) and min-p masking; masked logits become -inf."""
    if b.top_k is not None or b.top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # [N, V]
        v = logits.shape[-1]
        if b.top_k is not None:
            rank = torch.arange(v, device=logits.device)[None, :]  # [1, V]
            sorted_logits = sorted_logits.masked_fill(rank >= b.top_k[:, None], _NEG_INF)
        if b.top_p is not None:
            probs = sorted_logits.softmax(dim=-1)  # [N, V]
            before = probs.cumsum(dim=-1) - probs  # mass strictly before each token
            drop = before > b.top_p[:, None]
            drop[:, 0] = False  # always keep the most likely token
            sorted_logits = sorted_logits.masked_fill(drop, _NEG_INF)
        logits = torch.empty_like(logits).scatter_(1, order, sorted_logits)
    if b.min_p is not None:
        probs = logits.softmax(dim=-1)
        keep = probs >= b.min_p[:, None] * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(~keep, _NEG_INF)
    return logits


def sample(logits: torch.Tensor, b: SamplingBatch) -> SamplerOutput:
    """Sample one token per row of `logits [N, V]` (fp32, not modified)."""
    raw = logits
    if b.ban_rows is not None:
        logits = logits.clone()
        logits[b.ban_rows, b.ban_cols] = _NEG_INF
    logits = _apply_penalties(logits, b)
    if b.all_greedy:
        tokens = logits.argmax(dim=-1)  # [N]
    else:
        greedy_tokens = logits.argmax(dim=-1) if b.greedy is not None else None  # [N]
        scaled = _filter(logits / b.temperature[:, None], b)  # [N, V]
        probs = scaled.softmax(dim=-1)
        q = torch.empty_like(probs).exponential_()
        for row, gen in b.generators:
            q[row].exponential_(generator=gen)
        sampled = (probs / q).argmax(dim=-1)  # [N]
        tokens = torch.where(b.greedy, greedy_tokens, sampled) if b.greedy is not None else sampled
    out = SamplerOutput(token_ids=tokens)
    if b.max_logprobs >= 0:
        lp = raw.log_softmax(dim=-1)  # [N, V] logprobs of the model's distribution
        out.sampled_logprob = lp.gather(1, tokens[:, None])[:, 0]
        out.sampled_rank = (lp > out.sampled_logprob[:, None]).sum(dim=-1) + 1
        if b.max_logprobs > 0:
            out.top_logprobs, out.top_ids = lp.topk(b.max_logprobs, dim=-1)
    return out


@dataclass
class PromptLogprobs:
    """Logprobs of `M` prompt tokens under the model's distribution at the position before each."""

    token_logprob: torch.Tensor  # [M] fp32
    rank: torch.Tensor  # [M] int64, 1 = most likely
    top_logprobs: torch.Tensor | None  # [M, K] fp32 (None when K = 0)
    top_ids: torch.Tensor | None  # [M, K] int64


def prompt_logprobs(logits: torch.Tensor, targets: torch.Tensor, k: int) -> PromptLogprobs:
    """Log-softmax of `logits [M, V]` (fp32) gathered at `targets [M]` (the actual next prompt
    tokens), their ranks and the top-`k` (k >= 0) of each row."""
    lp = logits.float().log_softmax(dim=-1)  # [M, V]
    token_lp = lp.gather(1, targets[:, None])[:, 0]  # [M]
    rank = (lp > token_lp[:, None]).sum(dim=-1) + 1  # [M]
    top_lp = top_ids = None
    if k > 0:
        top_lp, top_ids = lp.topk(k, dim=-1)  # [M, K]
    return PromptLogprobs(token_lp, rank, top_lp, top_ids)
