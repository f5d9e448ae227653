"""Test fixtures: tiny random Qwen3-Next / Qwen3.5 checkpoints in the official release layout.

    from deltaserve.testing import SPECS, write_checkpoint, cached_checkpoint, load_hf_model
    path = cached_checkpoint("qwen3-next-a")       # built once per process, read-only
    hf = load_hf_model(path)                         # transformers reference, fp32, eval, CPU

Nothing is downloaded; nothing binary is committed. transformers is imported only when needed.
"""

from deltaserve.testing.cache import cached_checkpoint, set_cache_root
from deltaserve.testing.checkpoint import build_hf_config, build_hf_model, fuse_experts, write_checkpoint
from deltaserve.testing.corrupt import make_corrupted_copy
from deltaserve.testing.hf import load_hf_model
from deltaserve.testing.shards import shard_files, tensor_index
from deltaserve.testing.specs import ARCHITECTURES, SPECS, TinySpec, resolve_spec
from deltaserve.testing.tokenizer import SPECIAL_TOKENS, special_token_ids

__all__ = [
    "ARCHITECTURES",
    "SPECIAL_TOKENS",
    "SPECS",
    "TinySpec",
    "build_hf_config",
    "build_hf_model",
    "cached_checkpoint",
    "fuse_experts",
    "load_hf_model",
    "make_corrupted_copy",
    "resolve_spec",
    "set_cache_root",
    "shard_files",
    "special_token_ids",
    "tensor_index",
    "write_checkpoint",
]
