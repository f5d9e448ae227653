"""Prometheus metrics of the server, under vLLM's metric names.

The names are deliberately vLLM's (`vllm:num_requests_running`, `vllm:time_to_first_token_seconds`,
…, label `model_name`), so existing Grafana dashboards, alerts and scrapers written for `vllm serve`
work unchanged against `deltaserve serve`. Gauges and token counters are read from `engine.stats()`
at scrape time; latency histograms are observed by the server per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from deltaserve.engine.outputs import RequestOutput

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0)  # fmt: skip
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


class _EngineCollector(Collector):
    """Gauges and token counters from `engine.stats()` (read when Prometheus scrapes)."""

    def __init__(self, stats: Callable[[], dict], model_name: str, fallback: dict[str, float]) -> None:
        self._stats = stats
        self._model = model_name
        self._fallback = fallback

    def collect(self):
        s = self._stats()
        labels = ["model_name"]
        for name, key, doc in (
            ("vllm:num_requests_running", "num_running", "Number of requests in model execution batches."),
            ("vllm:num_requests_waiting", "num_waiting", "Number of requests waiting to be processed."),
            ("vllm:kv_cache_usage_perc", "kv_cache_usage", "KV-cache usage. 1 means 100 percent usage."),
        ):
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric([self._model], float(s.get(key, 0.0)))
            yield g
        for name, key, doc in (
            ("vllm:prompt_tokens", "prompt_tokens_total", "Number of prefill tokens processed."),
            ("vllm:generation_tokens", "generation_tokens_total", "Number of generation tokens processed."),
        ):
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric([self._model], float(s.get(key, self._fallback[key])))
            yield c


class ServerMetrics:
    """All metrics of one server (own registry, so several servers can live in one process)."""

    def __init__(self, stats: Callable[[], dict], model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        # used only if the engine's stats() lacks token totals
        self._fallback = {"prompt_tokens_total": 0.0, "generation_tokens_total": 0.0}
        self.registry.register(_EngineCollector(stats, model_name, self._fallback))
        labels = ["model_name"]
        r = self.registry
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token.",
            labels,
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Inter-token latency.",
            labels,
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.tpot = Histogram(
            "vllm:request_time_per_output_token_seconds",
            "Time per output token (after the first).",
            labels,
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "End-to-end request latency.",
            labels,
            registry=r,
            buckets=_E2E_BUCKETS,
        )
        self.prompt_len = Histogram(
            "vllm:request_prompt_tokens",
            "Prompt tokens per request.",
            labels,
            registry=r,
            buckets=_TOKEN_BUCKETS,
        )
        self.gen_len = Histogram(
            "vllm:request_generation_tokens",
            "Generated tokens per request.",
            labels,
            registry=r,
            buckets=_TOKEN_BUCKETS,
        )
        self.success = Counter(
            "vllm:request_success", "Finished requests.", ["model_name", "finished_reason"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def tracker(self) -> RequestTracker:
        return RequestTracker(self)


class RequestTracker:
    """Observes one request's outputs as they stream out of the engine."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.m = metrics
        self.arrival = time.perf_counter()
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.num_generated = 0
        self.done = False

    def observe(self, out: RequestOutput) -> None:
        now = time.perf_counter()
        total = sum(len(c.token_ids) for c in out.outputs)
        label = self.m.model_name
        if total > self.num_generated:
            if self.first_token is None:
                self.first_token = now
                self.m.ttft.labels(label).observe(now - self.arrival)
                self.m.prompt_len.labels(label).observe(len(out.prompt_token_ids))
                self.m._fallback["prompt_tokens_total"] += len(out.prompt_token_ids)
            elif self.last_token is not None:
                self.m.itl.labels(label).observe(now - self.last_token)
            self.m._fallback["generation_tokens_total"] += total - self.num_generated
            self.num_generated = total
            self.last_token = now
        if out.finished and not self.done:
            self.done = True
            self.m.e2e.labels(label).observe(now - self.arrival)
            self.m.gen_len.labels(label).observe(total)
            if self.first_token is not None and total > 1:
                self.m.tpot.labels(label).observe((now - self.first_token) / (total - 1))
            reason = out.outputs[0].finish_reason if out.outputs else None
            self.m.success.labels(label, reason or "abort").inc()
