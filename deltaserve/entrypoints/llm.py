"""Offline batch generation, shaped like vLLM's `LLM`.

from deltaserve import LLM, SamplingParams
llm = LLM(model="/path/to/checkpoint", device="cpu")
for out in llm.generate(["Hello", {"prompt_token_ids": [1, 2, 3]}], SamplingParams(max_tokens=8)):
    print(out.prompt_token_ids, out.outputs[0].token_ids, out.outputs[0].text, out.outputs[0].finish_reason)
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from deltaserve import env
from deltaserve.config import EngineConfig
from deltaserve.engine.core import LLMEngine, PromptType
from deltaserve.engine.outputs import RequestOutput
from deltaserve.engine.sampling_params import SamplingParams


class LLM:
    """An engine plus a synchronous `generate`; keyword arguments are `EngineConfig.create`'s."""

    def __init__(self, model: str, **kwargs: Any) -> None:
        self.engine_config = EngineConfig.create(model, **kwargs)
        self.llm_engine = LLMEngine(self.engine_config)
        self._ids = itertools.count()

    def get_tokenizer(self):
        return self.llm_engine.tokenizer

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate for every prompt (a string or `{"prompt_token_ids": [...]}`); results in input order."""
        if isinstance(prompts, str | Mapping):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(
                    f"sampling_params: got {len(params)} for {len(prompts)} prompts (pass one or one per prompt)"
                )
        engine = self.llm_engine
        ids = [f"offline-{next(self._ids)}" for _ in prompts]
        reqs = [
            engine.make_request(rid, p, sp) for rid, p, sp in zip(ids, prompts, params)
        ]  # validate all first
        for req in reqs:
            engine.add_request(req.request_id, req)
        done: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm and not env.get("DELTASERVE_DISABLE_PROGRESS_BAR"):
            from tqdm.auto import tqdm

            bar = tqdm(total=len(reqs), desc="Processed prompts", dynamic_ncols=True)
        try:
            while engine.has_unfinished_requests():
                for out in engine.step(only_finished=True):
                    if out.finished:
                        done[out.request_id] = out
                        if bar is not None:
                            bar.update(1)
        except BaseException:
            for rid in ids:
                engine.abort_request(rid)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [done[rid] for rid in ids]
