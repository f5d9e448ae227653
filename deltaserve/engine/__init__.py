"""The standalone engine (import the submodules; this package stays import-light).

- `request`: `Request` / `Sequence` bookkeeping; `cache`: KV pages + GDN state slots (pure Python);
- `scheduler`: continuous batching, chunked prefill, preemption by recompute;
- `runner`: builds one `ForwardBatch` per step, runs the model, samples; `graph`: CUDA-graph decode;
- `sampler`: batched sampling; `detokenizer`: incremental text + stop strings;
- `core.LLMEngine`: the synchronous loop; `async_engine.AsyncEngine`: the same loop on a thread for
  asyncio servers. `sampling_params` and `outputs` are the public contract (vLLM-shaped).
"""
