"""Prometheus metrics of one server (`GET /metrics`), in a registry of its own so that several
servers in one process (tests) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 300)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The server's counters, gauges and histograms (names prefixed ``difflm_``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("difflm_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("difflm_prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.completion_tokens = Counter("difflm_completion_tokens", "completion tokens of finished requests",
                                         registry=r)
        self.model_calls = Counter("difflm_model_calls", "denoising steps run (one batched model call each)",
                                   registry=r)
        self.queue_depth = Gauge("difflm_queue_depth", "requests waiting for a batch slot", registry=r)
        self.active_rows = Gauge("difflm_active_rows", "rows (choices) being denoised", registry=r)
        self.latency = Histogram("difflm_request_latency_seconds", "request latency, queue included",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_text = Histogram("difflm_time_to_first_text_seconds", "time until the first final text",
                                    ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.step_latency = Histogram("difflm_step_latency_seconds", "one denoising step of a batch",
                                      buckets=STEP_BUCKETS, registry=r)
        self.batch_rows = Histogram("difflm_batch_rows", "rows sharing one model call", buckets=BATCH_BUCKETS,
                                    registry=r)

    def step(self, rows: int, seconds: float) -> None:
        """One batched model call of ``rows`` rows that took ``seconds``."""
        self.model_calls.inc()
        self.batch_rows.observe(rows)
        self.step_latency.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
