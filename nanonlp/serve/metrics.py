"""Prometheus metrics of one server (prometheus-client), served at GET /metrics.

Each app has a registry of its own, so two apps in one process (tests, a Ray replica beside another)
never share counts. What an operator reads:

    nanonlp_requests_total{endpoint, status}       requests answered, by route and HTTP status
    nanonlp_request_seconds{endpoint}              latency histogram, by route
    nanonlp_queue_depth{model}                     requests waiting for a model's batcher or thread slots
    nanonlp_batch_items{model}                     items (texts) per batch the model ran
    nanonlp_batch_seconds{model}                   time the model took to run each batch
    nanonlp_queue_wait_seconds{model}              time a batched request waited before its batch began
    nanonlp_generated_tokens_total{model}          tokens sampled by language models
    nanonlp_generation_step_sequences{model}       sequences stepped together per forward pass (continuous batching)
    nanonlp_model_load_seconds{model}              how long loading each mounted run took
"""

from __future__ import annotations

from typing import Callable

from nanonlp.errors import ConfigError

# Request latencies from 2.5 ms to a minute: the classifier's fast path and the generation tail both resolve.
LATENCY_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self):
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError:
            raise ConfigError("nanonlp serve needs prometheus-client for /metrics: pip install 'nanonlp[serve]'.") from None
        self.registry = CollectorRegistry()
        self.requests = Counter("nanonlp_requests", "Requests answered, by endpoint and HTTP status.",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("nanonlp_request_seconds", "Request latency in seconds, by endpoint.", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("nanonlp_queue_depth", "Requests waiting for the model.", ["model"], registry=self.registry)
        self.batch_items = Histogram("nanonlp_batch_items", "Items (texts) per batch run.", ["model"],
                                     buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("nanonlp_batch_seconds", "Seconds the model took to run a batch.", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_wait = Histogram("nanonlp_queue_wait_seconds", "Seconds a batched request waited before its batch began.",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.generated_tokens = Counter("nanonlp_generated_tokens", "Tokens sampled by language models.", ["model"],
                                        registry=self.registry)
        self.step_sequences = Histogram("nanonlp_generation_step_sequences", "Sequences a language model stepped together, per step.",
                                        ["model"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.load_seconds = Gauge("nanonlp_model_load_seconds", "Seconds taken to load the mounted run.", ["model"],
                                  registry=self.registry)

    def watch_queue(self, model: str, depth: Callable[[], float]) -> None:
        """The model's queue depth, read when /metrics is scraped."""
        self.queue_depth.labels(model).set_function(depth)

    def batch_observer(self, model: str) -> Callable[[int, float, list[float]], None]:
        """What a batcher reports of each batch: its items, the seconds it ran, and each request's wait before it."""
        items, seconds, wait = self.batch_items.labels(model), self.batch_seconds.labels(model), self.queue_wait.labels(model)

        def observe(count: int, run_seconds: float, waits: list[float]) -> None:
            items.observe(count)
            seconds.observe(run_seconds)
            for w in waits:
                wait.observe(w)

        return observe

    def step_observer(self, model: str) -> Callable[[int], None]:
        return self.step_sequences.labels(model).observe

    def token_counter(self, model: str) -> Callable[[], None]:
        child = self.generated_tokens.labels(model)
        return child.inc

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
