"""The server's Prometheus metrics at /metrics: requests, tokens, latency, the batch, the caches.

Each server has its own registry (tests run several in one process). Counters and histograms
are updated by the routes; gauges and the speculative-decoding counters are read from the
scheduler at each scrape, so they cost nothing between scrapes.

    curl -s 127.0.0.1:8000/metrics | grep lmstack_
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

from lmstack.serve.scheduler import Scheduler

prometheus_client.disable_created_metrics()  # the *_created series only add noise to every scrape


class Metrics:
    """Prometheus counters, gauges and histograms of one server (its own registry)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("lmstack_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.prompt_tokens = Counter("lmstack_prompt_tokens", "prompt tokens processed", registry=r)
        self.generation_tokens = Counter("lmstack_generation_tokens", "tokens generated", registry=r)
        self.ttft = Histogram("lmstack_time_to_first_token_seconds", "from request to first token", registry=r,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.latency = Histogram("lmstack_request_latency_seconds", "from request to last token", ["route"],
                                 registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        Gauge("lmstack_queue_depth", "requests waiting for a batch row", registry=r).set_function(
            lambda: scheduler.stats()["waiting"])
        Gauge("lmstack_running_rows", "rows in the running batch", registry=r).set_function(
            lambda: scheduler.stats()["running"])
        Gauge("lmstack_decode_steps", "decode steps taken", registry=r).set_function(lambda: scheduler.steps)
        if scheduler.speculative is not None:
            r.register(SpeculationCounts(scheduler))
        store = scheduler.engine.prefix_cache
        if store is not None:
            Gauge("lmstack_prefix_cache_hit_tokens", "prompt tokens served from the prefix cache",
                  registry=r).set_function(lambda: store.stats()["hit_tokens"])
            Gauge("lmstack_prefix_cache_bytes", "bytes of keys/values in the prefix cache",
                  registry=r).set_function(lambda: store.stats()["bytes"])


class SpeculationCounts:
    """Prometheus counters read from the scheduler at each scrape: draft tokens verified and
    kept (accepted / proposed is the acceptance rate)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self):
        yield CounterMetricFamily("lmstack_speculative_proposed_tokens",
                                  "draft tokens the model verified", value=self.scheduler.proposed)
        yield CounterMetricFamily("lmstack_speculative_accepted_tokens",
                                  "draft tokens accepted (kept in the output)", value=self.scheduler.accepted)
