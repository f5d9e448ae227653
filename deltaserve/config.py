"""`EngineConfig`: the frozen settings of one standalone engine, with every "auto" resolved once.

`EngineConfig.create(model=DIR, **overrides)` reads the checkpoint's `ModelConfig`, resolves the
automatic values (device, dtype, max_model_len, cache budget, ...) and validates everything, raising
`ValueError` naming the argument. Nothing downstream re-resolves or reads the environment.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deltaserve import env

_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EngineConfig:
    """Resolved engine settings (build with `EngineConfig.create`)."""

    model: str  # checkpoint directory
    tokenizer: str  # tokenizer directory (defaults to `model`)
    device: str  # "cuda", "cuda:N" or "cpu"
    dtype: str  # weights / activations / KV cache / conv state: float32 | bfloat16 | float16
    ssm_dtype: str  # recurrent GDN state dtype (checkpoint's mamba_ssm_dtype, else float32)
    max_model_len: int  # prompt + generated tokens per sequence
    max_num_seqs: int  # running sequences at once (= GDN state slots wanted)
    max_num_batched_tokens: int  # token budget per step (chunked prefill)
    block_size: int  # tokens per KV page
    gpu_memory_utilization: float  # fraction of the GPU the engine may use in total
    cpu_cache_bytes: int  # cache budget on the CPU
    num_kv_blocks: int | None  # override of the measured number of KV pages (tests, debugging)
    enforce_eager: bool  # no CUDA graphs
    cuda_graph_max_bs: int  # largest captured decode batch (0 on CPU / eager)
    seed: int  # global seed (unseeded sampling, random weights)
    tokenizer_mode: str = "auto"
    # launch decode step N+1 before step N's tokens reach the host (hides host work behind the GPU)
    overlap_schedule: bool = True

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def use_cuda_graphs(self) -> bool:
        return self.is_cuda and not self.enforce_eager and self.cuda_graph_max_bs > 0

    def replace(self, **changes: Any) -> EngineConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def create(
        cls,
        model: str | Path,
        *,
        tokenizer: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        ssm_dtype: str = "auto",
        max_model_len: int | None = None,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int | None = None,
        block_size: int = 16,
        gpu_memory_utilization: float = 0.9,
        cpu_cache_bytes: int | None = None,
        num_kv_blocks: int | None = None,
        enforce_eager: bool = False,
        cuda_graph_max_bs: int | None = None,
        seed: int = 0,
        overlap_schedule: bool = True,
        **unknown: Any,
    ) -> EngineConfig:
        """Resolve and validate. `None`/"auto" values are filled from the checkpoint and the host."""
        if unknown:
            raise ValueError(f"unknown engine argument(s): {', '.join(sorted(unknown))}")
        import torch

        from deltaserve.models.config import ModelConfig

        device = "auto" if device is None else device
        dtype = "auto" if dtype is None else dtype
        ssm_dtype = "auto" if ssm_dtype is None else ssm_dtype

        path = Path(model)
        if not (path / "config.json").is_file():
            raise ValueError(f"model: {str(model)!r} is not a checkpoint directory (no config.json)")
        mcfg = ModelConfig.from_hf(path)

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if not (device == "cpu" or device.startswith("cuda")):
            raise ValueError(f"device: must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} requested but CUDA is not available")
        is_cuda = device.startswith("cuda")

        if dtype == "auto":
            dtype = "bfloat16" if is_cuda else "float32"
        dtype = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}.get(
            dtype, dtype
        )
        if dtype not in _DTYPES:
            raise ValueError(f"dtype: must be 'auto' or one of {_DTYPES}, got {dtype!r}")
        if ssm_dtype == "auto":
            ssm_dtype = mcfg.mamba_ssm_dtype or "float32"
        if ssm_dtype not in _DTYPES:
            raise ValueError(f"ssm_dtype: must be 'auto' or one of {_DTYPES}, got {ssm_dtype!r}")

        if max_model_len is None:
            max_model_len = mcfg.max_position_embeddings
        _positive("max_model_len", max_model_len)
        if max_model_len > mcfg.max_position_embeddings:
            raise ValueError(
                f"max_model_len: {max_model_len} exceeds the model's max_position_embeddings "
                f"({mcfg.max_position_embeddings})"
            )
        _positive("max_num_seqs", max_num_seqs)
        if max_num_batched_tokens is None:
            max_num_batched_tokens = max(8192, max_num_seqs) if is_cuda else max(2048, max_num_seqs)
        _positive("max_num_batched_tokens", max_num_batched_tokens)
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens: {max_num_batched_tokens} is below max_num_seqs ({max_num_seqs}); "
                "every running sequence needs at least one token per step"
            )
        _positive("block_size", block_size)
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization: must be in (0, 1], got {gpu_memory_utilization}")
        if cpu_cache_bytes is None:
            cpu_cache_bytes = int(env.get("DELTASERVE_CPU_CACHE_GIB") * (1 << 30))
        _positive("cpu_cache_bytes", cpu_cache_bytes)
        if num_kv_blocks is not None:
            _positive("num_kv_blocks", num_kv_blocks)
        if cuda_graph_max_bs is None:
            cuda_graph_max_bs = env.get("DELTASERVE_CUDA_GRAPH_MAX_BS")
        if cuda_graph_max_bs < 0:
            raise ValueError(f"cuda_graph_max_bs: must be >= 0, got {cuda_graph_max_bs}")
        cuda_graph_max_bs = 0 if (not is_cuda or enforce_eager) else min(cuda_graph_max_bs, max_num_seqs)
        if not isinstance(seed, int):
            raise ValueError(f"seed: must be an int, got {seed!r}")
        if not isinstance(overlap_schedule, bool):
            raise ValueError(f"overlap_schedule: must be a bool, got {overlap_schedule!r}")
        return cls(
            model=str(path),
            tokenizer=str(tokenizer) if tokenizer is not None else str(path),
            device=device,
            dtype=dtype,
            ssm_dtype=ssm_dtype,
            max_model_len=int(max_model_len),
            max_num_seqs=int(max_num_seqs),
            max_num_batched_tokens=int(max_num_batched_tokens),
            block_size=int(block_size),
            gpu_memory_utilization=float(gpu_memory_utilization),
            cpu_cache_bytes=int(cpu_cache_bytes),
            num_kv_blocks=num_kv_blocks,
            enforce_eager=bool(enforce_eager),
            cuda_graph_max_bs=int(cuda_graph_max_bs),
            seed=seed,
            overlap_schedule=overlap_schedule,
        )


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
