"""AsyncEngine: streaming, concurrency, abort, stats, validation, idling (asyncio.run, no plugin)."""

from __future__ import annotations

import asyncio
import time

import pytest

from deltaserve.engine.async_engine import AsyncEngine
from deltaserve.engine.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def engine(tiny_checkpoint, make_engine):
    return make_engine(tiny_checkpoint("qwen3-next-a"))


def _async(engine) -> AsyncEngine:
    return AsyncEngine(engine.config, engine=engine)


def test_stream_is_cumulative_and_matches_sync(engine):
    prompts = [[5, 6, 7], [100, 200, 300, 400, 17], [9]]
    params = SamplingParams(temperature=0, max_tokens=7, ignore_eos=True)

    async def main():
        ae = _async(engine)
        await ae.start()

        async def one(i):
            seen = []
            async for out in ae.generate({"prompt_token_ids": prompts[i]}, params, f"s{i}"):
                seen.append(out)
            return seen

        try:
            return await asyncio.gather(*(one(i) for i in range(3)))
        finally:
            await ae.shutdown()

    streams = asyncio.run(main())
    for i, seen in enumerate(streams):
        lens = [len(o.outputs[0].token_ids) for o in seen]
        assert lens == sorted(lens) and lens[-1] == 7
        assert [o.finished for o in seen] == [False] * (len(seen) - 1) + [True]
        final = seen[-1].outputs[0].token_ids
        assert all(final[: len(o.outputs[0].token_ids)] == o.outputs[0].token_ids for o in seen)
        engine.add_request("sync", prompts[i], params)
        ref = None
        while engine.has_unfinished_requests():
            for out in engine.step():
                ref = out
        assert ref.outputs[0].token_ids == final


def test_abort_frees_cache_and_ends_stream(engine):
    async def main():
        ae = _async(engine)
        await ae.start()
        outs = []
        try:
            gen = ae.generate(
                [5, 6, 7, 8], SamplingParams(temperature=0, max_tokens=100, ignore_eos=True), "a"
            )
            async for out in gen:
                outs.append(out)
                if len(outs) == 2:
                    await ae.abort("a")
            await asyncio.sleep(0)
            return outs, ae.stats()
        finally:
            await ae.shutdown()

    outs, stats = asyncio.run(main())
    assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "abort"
    assert stats["num_running"] == 0 and stats["kv_cache_usage"] == 0.0
    engine.check_integrity()
    assert engine.cache.slots.num_used == 0


def test_cancelled_consumer_aborts_request(engine):
    async def main():
        ae = _async(engine)
        await ae.start()
        try:

            async def consume():
                async for _ in ae.generate([3, 4], SamplingParams(max_tokens=1000, ignore_eos=True), "c"):
                    pass

            task = asyncio.create_task(consume())
            while ae.stats()["generation_tokens_total"] == 0 or not engine.has_unfinished_requests():
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(200):
                if not engine.has_unfinished_requests():
                    break
                await asyncio.sleep(0.01)
        finally:
            await ae.shutdown()

    asyncio.run(main())
    assert not engine.has_unfinished_requests()
    engine.check_integrity()


def test_validation_n_and_idle(engine):
    async def main():
        ae = _async(engine)
        await ae.start()
        try:
            with pytest.raises(ValueError, match="max_model_len"):
                async for _ in ae.generate(list(range(3, 400)), SamplingParams(), "long"):
                    pass
            last = None
            async for out in ae.generate("hello world", SamplingParams(n=2, max_tokens=4, seed=1), "n2"):
                last = out
            steps = engine.num_steps
            await asyncio.sleep(0.3)  # idle: the thread waits on its event, no steps
            assert engine.num_steps == steps
            return last, ae.stats()
        finally:
            await ae.shutdown()

    t0 = time.perf_counter()
    last, stats = asyncio.run(main())
    assert time.perf_counter() - t0 < 60
    assert len(last.outputs) == 2 and all(
        len(c.token_ids) == 4 or c.finish_reason == "stop" for c in last.outputs
    )
    assert last.prompt == "hello world" and last.prompt_token_ids
    for key in (
        "num_running",
        "num_waiting",
        "kv_cache_usage",
        "prompt_tokens_total",
        "generation_tokens_total",
    ):
        assert key in stats
    assert stats["generation_tokens_total"] > 0


def test_from_config_kwargs(tiny_checkpoint):
    ae = AsyncEngine.from_config(
        model=str(tiny_checkpoint("qwen3.5-dense-a")), device="cpu", max_model_len=64
    )
    assert ae.engine_config.max_model_len == 64 and ae.model_config.family == "qwen3_5"
    assert ae.tokenizer.encode("hi", add_special_tokens=False)
    stats = ae.stats()
    assert stats["num_running"] == 0 and stats["kv_cache_usage"] == 0.0
    with pytest.raises(ValueError, match="either"):
        AsyncEngine.from_config(ae.engine_config, model="x")
