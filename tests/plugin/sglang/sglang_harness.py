"""Test-only driver: SGLang's runtime set up in-process on CPU, SGLang-layout pools and batches.

Nothing here patches SGLang. It does what SGLang's scheduler and model runner would do for a
handful of requests: publish server args, start world-size-1 process groups (gloo), build the
model through SGLang's own loader, allocate SGLang's own `HybridReqToTokenPool` (with its
`MambaPool`) and `HybridLinearKVPool`, and fill `ForwardBatch`es (EXTEND / DECODE / MIXED).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

PACKAGE = "deltaserve.plugin.sglang.models"


def set_sglang_env() -> None:
    """Environment SGLang reads at import: our package, and fp32 conv state for fp32 parity."""
    os.environ["SGLANG_EXTERNAL_MODEL_PACKAGE"] = PACKAGE
    os.environ["SGLANG_MAMBA_CONV_DTYPE"] = "float32"  # default bf16; ours is the model dtype
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29657")


_RUNTIME: dict[str, object] = {}


def init_runtime(model_path: Path) -> None:
    """Publish SGLang server args and start world-size-1 process groups, once per process."""
    if _RUNTIME:
        return
    from sglang.srt.distributed import parallel_state
    from sglang.srt.distributed.parallel_state import (
        init_distributed_environment,
        initialize_model_parallel,
    )
    from sglang.srt.server_args import ServerArgs

    common = dict(
        model_path=str(model_path), device="cpu", dtype="float32", tp_size=1, disable_radix_cache=True
    )
    try:
        args = ServerArgs(**common, mamba_radix_cache_strategy="no_buffer")
    except TypeError:  # 0.5.9 names it mamba_scheduler_strategy
        args = ServerArgs(**common, mamba_scheduler_strategy="no_buffer")
    init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo")
    try:  # 0.5.23 (not 0.5.9): a runtime context replaces the global server args
        from sglang.srt.runtime_context import SpawnRanks, get_parallel, publish, reset_context
    except ImportError:
        from sglang.srt.server_args import set_global_server_args_for_scheduler

        set_global_server_args_for_scheduler(args)
    else:
        reset_context()
        publish(args, role="test", ranks=SpawnRanks(world_rank=0))
        if parallel_state._WORLD is not None:
            get_parallel().override_permanently(world_group=parallel_state._WORLD)
    initialize_model_parallel(backend="gloo")
    _RUNTIME["ok"] = True


def load_through_sglang(model_path: Path) -> torch.nn.Module:
    """SGLang's `get_model` on CPU, fp32: resolves the class through SGLang's registry."""
    from sglang.srt.configs.device_config import DeviceConfig
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.model_loader import get_model

    init_runtime(model_path)
    mc = ModelConfig(str(model_path), dtype="float32")
    return get_model(model_config=mc, load_config=LoadConfig(), device_config=DeviceConfig("cpu"))


def _construct(cls, **kwargs):
    """`cls(**kwargs)` keeping only the keyword arguments this SGLang version's `cls` accepts."""
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in accepted})


def make_pools(
    model: torch.nn.Module,
    *,
    ssm_layout: str,
    num_reqs: int = 8,
    num_tokens: int = 512,
    kv_dtype: torch.dtype = torch.float32,
):
    """SGLang's own pools for `model`; the temporal state allocated in `ssm_layout`.

    SGLang allocates `[HV, Dv, Dk]` in every version; the "kv" case re-creates 0.5.9's reading of
    the pool by allocating `[HV, Dk, Dv]` through the same `Mamba2StateShape` (with Dk != Dv a
    layout mix-up cannot pass silently).
    """
    from sglang.srt.mem_cache.memory_pool import HybridLinearKVPool, HybridReqToTokenPool

    hf = model.hf_config.get_text_config()
    params = hf.mamba2_cache_params
    hv, dv, dk = params.shape.temporal
    if ssm_layout == "kv":
        shape = dataclasses.replace(params.shape, temporal=(hv, dk, dv))
        params = dataclasses.replace(params, shape=shape)
    c = model.config  # deltaserve ModelConfig
    rtp = _construct(
        HybridReqToTokenPool,
        size=num_reqs,
        mamba_size=num_reqs,
        mamba_spec_state_size=num_reqs,
        max_context_len=256,
        device="cpu",
        enable_memory_saver=False,
        cache_params=params,
        mamba_layer_ids=list(c.linear_layers),  # >= 0.5.10 (0.5.9 reads cache_params.layers)
        enable_mamba_extra_buffer=False,
        enable_overlap_schedule=False,  # >= 0.5.10
    )
    kvp = _construct(
        HybridLinearKVPool,
        size=num_tokens,
        dtype=kv_dtype,
        page_size=1,
        head_num=c.num_key_value_heads,
        head_dim=c.head_dim,
        full_attention_layer_ids=list(c.full_layers),
        device="cpu",
        mamba_pool=rtp.mamba_pool,
        enable_memory_saver=False,
        enable_kvcache_transpose=False,  # 0.5.9
    )
    return rtp, kvp


@dataclass
class _Req:
    row: int
    tokens: list[int] = field(default_factory=list)


class SGLangDriver:
    """Plays SGLang's scheduler for a few requests: req rows, mamba slots, token slots, batches.

    Token slots are handed out in a scrambled order (slot 0 stays SGLang's padding slot), so
    `req_to_token` rows are non-trivial block tables.
    """

    def __init__(self, model: torch.nn.Module, rtp, kvp, *, seed: int = 0) -> None:
        self.model, self.rtp, self.kvp = model, rtp, kvp
        g = torch.Generator().manual_seed(seed)
        num_tokens = kvp.size
        self.free_tokens = (torch.randperm(num_tokens, generator=g) + 1).tolist()
        self.free_rows = list(range(rtp.req_to_token.shape[0]))[::-1]
        self.free_mamba = list(range(1, rtp.mamba_pool.size + 1))[::-1]
        self.reqs: dict[object, _Req] = {}

    def _admit(self, rid: object) -> _Req:
        req = _Req(row=self.free_rows.pop())
        self.rtp.req_index_to_mamba_index_mapping[req.row] = self.free_mamba.pop()
        self.reqs[rid] = req
        return req

    @torch.no_grad()
    def step(self, work: list[tuple[object, list[int]]], *, mode: str | None = None):
        """One SGLang forward over `(request id, new tokens)`; returns `next_token_logits [B, V]`.

        `mode` defaults to DECODE when every request is known and brings one token, else EXTEND;
        pass "MIXED" for a chunked-prefill batch merged with decodes (extend format).
        """
        from sglang.srt.model_executor.forward_batch_info import (
            CaptureHiddenMode,
            ForwardBatch,
            ForwardMode,
        )

        ids, pos, out_loc, rows, seq_lens, prefix, ext = [], [], [], [], [], [], []
        for rid, toks in work:
            req = self.reqs.get(rid) or self._admit(rid)
            start = len(req.tokens)
            slots = [self.free_tokens.pop() for _ in toks]
            self.rtp.req_to_token[req.row, start : start + len(toks)] = torch.tensor(slots, dtype=torch.int32)
            req.tokens.extend(toks)
            ids += toks
            pos += list(range(start, start + len(toks)))
            out_loc += slots
            rows.append(req.row)
            seq_lens.append(len(req.tokens))
            prefix.append(start)
            ext.append(len(toks))
        if mode is None:
            mode = "DECODE" if all(n == 1 for n in ext) and all(p > 0 for p in prefix) else "EXTEND"
        bsz = len(work)
        seq_lens_t = torch.tensor(seq_lens, dtype=torch.int64)
        kw = dict(
            forward_mode=ForwardMode[mode],
            batch_size=bsz,
            input_ids=torch.tensor(ids, dtype=torch.int64),
            req_pool_indices=torch.tensor(rows, dtype=torch.int64),
            seq_lens=seq_lens_t,
            seq_lens_cpu=seq_lens_t.clone(),
            out_cache_loc=torch.tensor(out_loc, dtype=torch.int64),
            seq_lens_sum=sum(seq_lens),
            positions=torch.tensor(pos, dtype=torch.int64),
            return_logprob=False,
            capture_hidden_mode=CaptureHiddenMode.NULL,
        )
        if mode != "DECODE":
            ext_t = torch.tensor(ext, dtype=torch.int32)
            kw.update(
                extend_num_tokens=sum(ext),
                extend_seq_lens=ext_t,
                extend_prefix_lens=torch.tensor(prefix, dtype=torch.int32),
                extend_start_loc=torch.cumsum(ext_t, 0) - ext_t,
                extend_seq_lens_cpu=ext,
                extend_prefix_lens_cpu=prefix,
                extend_logprob_start_lens_cpu=ext,
            )
        names = {f.name for f in dataclasses.fields(ForwardBatch)}
        if "req_to_token_pool" in names:  # 0.5.9: the batch carries the pools
            kw.update(req_to_token_pool=self.rtp, token_to_kv_pool=self.kvp)
            fb = ForwardBatch(**kw)
            out = self.model(fb.input_ids, fb.positions, fb)
        else:  # newer: ModelRunner publishes them through the forward context's attention backend
            from sglang.srt.model_executor.forward_context import ForwardContext, forward_context

            fb = ForwardBatch(**kw)
            pools = SimpleNamespace(req_to_token_pool=self.rtp, token_to_kv_pool=self.kvp)
            with forward_context(ForwardContext(attn_backend=pools)):
                out = self.model(fb.input_ids, fb.positions, fb)
        return out.next_token_logits  # [B, V]
