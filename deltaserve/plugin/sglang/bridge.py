"""SGLang's forward batch and state pools -> deltaserve's `ForwardBatch` and `OpsBackend`.

What SGLang hands a model each step (`sglang.srt.model_executor.forward_batch_info.ForwardBatch`):

- `forward_mode`: DECODE (one new token per request), EXTEND (prefill chunks) or MIXED (chunked
  prefill merged with running decodes; every request in extend format, decodes with
  `extend_seq_len == 1` and a non-empty prefix). IDLE carries no tokens (DP attention).
- `req_pool_indices [B]`: each request's row in `req_to_token_pool.req_to_token [rows, max_ctx]`,
  which lists the KV-pool token slot of every position of the request.
- `out_cache_loc [T]`: KV-pool slot of each new token; `seq_lens [B]` (and `seq_lens_cpu`):
  context length including this step; extend modes add `extend_start_loc`, `extend_seq_lens`,
  `extend_prefix_lens` (a prefix > 0 means the request continues from cached state).
- the pools (on the batch up to ~0.5.2x, in the forward context after; `host_pools`):
  `req_to_token_pool` (a `HybridReqToTokenPool`): `get_mamba_indices(req_pool_indices)` gives each
  request's GDN state slot; `mamba_pool.mamba_cache.conv[0]` is `[L_lin, slots+1, conv_dim, W-1]`,
  `.temporal` is `[L_lin, slots+1, HV, Dv, Dk]` (read "kv" or "vk", see `version.py`), indexed by
  `mamba_map[global layer id]`.
- `token_to_kv_pool` (a `HybridLinearKVPool`): `get_kv_buffer(global layer id)` gives the
  full-attention layer's `(k, v)`, each `[tokens, Hkv, D]`.

Mapping (no state is copied): the KV buffers viewed `[tokens, 1, Hkv, D]` are our paged layout
with block size 1, whose block table is the request's `req_to_token` row; the conv and temporal
pools are handed over as per-layer views; the GDN slots are SGLang's mamba indices, and
`has_initial_state` is `extend_prefix_lens > 0` (all true in decode). The same `query_start_loc`
SGLang's GDN backend builds (`extend_start_loc` + total, or `arange(B+1)` in decode) is our
`cu_seqlens`.
"""

from __future__ import annotations

from typing import Any

import torch

from deltaserve.backends import OpsBackend, StateTensors
from deltaserve.context import AttentionMetadata, ForwardBatch, GDNMetadata
from deltaserve.models.config import ModelConfig

_KV_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class UnsupportedBatchError(NotImplementedError):
    """An SGLang feature this bridge does not serve (speculative verify, HiCache, ...); named."""


def build_state_tensors(
    config: ModelConfig, req_to_token_pool: Any, token_to_kv_pool: Any, ssm_layout: str
) -> StateTensors:
    """Per-layer views of SGLang's KV, conv and temporal pools, checked against `config`.

    Raises `ValueError` naming the pool when a shape or dtype does not match what our kernels
    read (e.g. an fp8 KV cache, a CPU-AMX conv layout, or a "kv" SSM layout with Dk != Dv).
    """
    c = config
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for layer in c.full_layers:
        k_buf, v_buf = token_to_kv_pool.get_kv_buffer(layer)  # [tokens, Hkv, D] each
        for name, buf in (("k", k_buf), ("v", v_buf)):
            if buf.dtype not in _KV_DTYPES:
                raise ValueError(
                    f"token_to_kv_pool: layer {layer} {name} buffer is {buf.dtype}; deltaserve's attention "
                    "reads an unquantised KV cache (drop --kv-cache-dtype fp8*)"
                )
            if buf.dim() != 3 or tuple(buf.shape[1:]) != (c.num_key_value_heads, c.head_dim):
                raise ValueError(
                    f"token_to_kv_pool: layer {layer} {name} buffer {tuple(buf.shape)} is not "
                    f"[tokens, {c.num_key_value_heads}, {c.head_dim}] (tensor parallelism is not supported)"
                )
        kv[layer] = (k_buf.unsqueeze(1), v_buf.unsqueeze(1))  # [tokens, 1, Hkv, D]: block size 1

    mamba_pool = req_to_token_pool.mamba_pool
    if getattr(req_to_token_pool, "layer_transfer_counter", None) is not None:
        raise UnsupportedBatchError("req_to_token_pool: hierarchical cache (HiCache) layer transfer")
    convs = mamba_pool.mamba_cache.conv
    if len(convs) != 1:
        raise ValueError(f"req_to_token_pool: expected one conv-state tensor per layer, got {len(convs)}")
    conv_all, temporal_all = convs[0], mamba_pool.mamba_cache.temporal
    w1 = c.linear_conv_kernel_dim - 1
    hv, dk, dv = c.linear_num_value_heads, c.linear_key_head_dim, c.linear_value_head_dim
    ssm_tail = (hv, dk, dv) if ssm_layout == "kv" else (hv, dv, dk)
    if tuple(conv_all.shape[2:]) != (c.conv_dim, w1):
        raise ValueError(
            f"req_to_token_pool: conv state {tuple(conv_all.shape)} is not [L, slots, {c.conv_dim}, {w1}]"
        )
    if tuple(temporal_all.shape[2:]) != ssm_tail:
        raise ValueError(
            f"req_to_token_pool: temporal state {tuple(temporal_all.shape)} does not match the "
            f"{ssm_layout!r} layout [L, slots, {', '.join(map(str, ssm_tail))}]"
        )
    conv: dict[int, torch.Tensor] = {}
    ssm: dict[int, torch.Tensor] = {}
    for layer in c.linear_layers:
        idx = req_to_token_pool.mamba_map[layer]
        conv[layer] = conv_all[idx]  # [slots, conv_dim, W-1], SGLang's own memory
        ssm[layer] = temporal_all[idx]  # [slots, HV, Dk, Dv] or [slots, HV, Dv, Dk]
    return StateTensors(kv=kv, conv=conv, ssm=ssm, ssm_layout=ssm_layout)


def _capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (SGLang captures decode batches)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def host_pools(fb: Any) -> tuple[Any, Any]:
    """`(req_to_token_pool, token_to_kv_pool)` of this forward.

    0.5.9 keeps them on the batch; 0.5.23 removed the references from `ForwardBatch`
    and publishes them through the forward context's attention backend instead.
    """
    rtp = getattr(fb, "req_to_token_pool", None)
    kvp = getattr(fb, "token_to_kv_pool", None)
    if rtp is not None and kvp is not None:
        return rtp, kvp
    from sglang.srt.model_executor.forward_context import get_req_to_token_pool, get_token_to_kv_pool

    return get_req_to_token_pool(), get_token_to_kv_pool()


class SGLangBridge:
    """Builds one deltaserve `ForwardBatch` per SGLang forward, over SGLang's own pools.

    `ssm_layout` is the installed SGLang's ("kv" up to 0.5.9, "vk" after; `version.py`). The
    state views are built once per pair of pools and reused.
    """

    def __init__(self, config: ModelConfig, ssm_layout: str) -> None:
        if ssm_layout not in ("kv", "vk"):
            raise ValueError(f"ssm_layout must be 'kv' or 'vk', got {ssm_layout!r}")
        self.config = config
        self.ssm_layout = ssm_layout
        self._pools: tuple[int, int] | None = None
        self._backend: OpsBackend | None = None

    def backend(self, req_to_token_pool: Any, token_to_kv_pool: Any) -> OpsBackend:
        """The `OpsBackend` over these pools (cached while the pools stay the same objects)."""
        key = (id(req_to_token_pool), id(token_to_kv_pool))
        if self._backend is None or self._pools != key:
            states = build_state_tensors(self.config, req_to_token_pool, token_to_kv_pool, self.ssm_layout)
            self._backend, self._pools = OpsBackend(states), key
        return self._backend

    def forward_batch(self, fb: Any, positions: torch.Tensor) -> ForwardBatch | None:
        """Translate SGLang's `ForwardBatch` `fb`; `None` for an IDLE batch (no tokens).

        `positions` is what SGLang passed to `forward` (`[T]`); for mRoPE models SGLang's
        `fb.mrope_positions [3, T]` is used when present.
        """
        mode = fb.forward_mode.name  # the enum's members differ between versions; names are stable
        if mode == "IDLE":
            return None
        if mode not in ("DECODE", "EXTEND", "MIXED"):
            raise UnsupportedBatchError(f"forward mode {mode} (speculative decoding and others)")
        if getattr(fb, "mamba_track_indices", None) is not None:
            raise UnsupportedBatchError(
                "mamba state tracking (the extra_buffer radix-cache strategy); launch with no_buffer "
                "(--mamba-radix-cache-strategy, named --mamba-scheduler-strategy up to 0.5.9)"
            )
        rtp, kvp = host_pools(fb)
        backend = self.backend(rtp, kvp)
        req = fb.req_pool_indices  # [B]
        bsz = int(fb.batch_size)
        dev = req.device
        slots = rtp.get_mamba_indices(req).to(torch.int32)  # [B]
        seq_lens = fb.seq_lens.to(torch.int32)  # [B]
        if mode == "DECODE":
            cu = torch.arange(bsz + 1, dtype=torch.int32, device=dev)  # [B+1]
            has_init = torch.ones(bsz, dtype=torch.bool, device=dev)
            max_q, decode_only = 1, True
        else:  # EXTEND / MIXED: every request in extend format
            start = fb.extend_start_loc.to(torch.int32)  # [B]
            lens = fb.extend_seq_lens.to(torch.int32)  # [B]
            cu = torch.cat([start, start[-1:] + lens[-1:]])  # [B+1]: SGLang's query_start_loc
            has_init = fb.extend_prefix_lens > 0  # [B]
            lens_cpu = fb.extend_seq_lens_cpu
            max_q = int(max(lens_cpu)) if lens_cpu is not None else int(fb.input_ids.shape[0])
            decode_only = False
        if fb.seq_lens_cpu is not None and not _capturing():
            max_seq = int(fb.seq_lens_cpu.max())
        else:
            # Under CUDA-graph capture a host bound would be frozen into the graph and be too small
            # on replay; the table width bounds every request (correct; the kernel reads more).
            max_seq = int(rtp.req_to_token.shape[1])
        block_tables = rtp.req_to_token[req, :max_seq]  # [B, max_seq] int32 token slots
        pos = positions
        if self.config.mrope_section is not None and getattr(fb, "mrope_positions", None) is not None:
            pos = fb.mrope_positions  # [3, T]
        return ForwardBatch(
            positions=pos,
            cu_seqlens=cu,
            seq_lens=seq_lens,
            num_seqs=bsz,
            max_query_len=max_q,
            max_seq_len=max_seq,
            attn=AttentionMetadata(
                block_tables=block_tables,
                slot_mapping=fb.out_cache_loc.to(torch.int64),
                block_size=1,
            ),
            gdn=GDNMetadata(state_slots=slots, has_initial_state=has_init, decode_only=decode_only),
            attn_backend=backend,
            gdn_backend=backend,
        )
