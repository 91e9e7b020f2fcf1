"""Prometheus metrics: one registry per app instance, every series labelled with the model.

Buckets start at 0.5 ms: a decode step of a small model takes a few milliseconds, and
the default buckets (from 5 ms) or the 0.3 s floor of some servers cannot see it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PREFIX = "promptgen"


class Metrics:
    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        self.model = model
        r = self.registry
        # process_resident_memory_bytes, process_cpu_seconds_total...: a soak run watches the
        # server's memory through /metrics (loadtest/soak.py), as Prometheus would.
        ProcessCollector(registry=r)

        def histogram(name: str, doc: str, labels: tuple[str, ...] = (), buckets: tuple[float, ...] = LATENCY_BUCKETS):
            return Histogram(f"{PREFIX}_{name}", doc, ("model", *labels), registry=r, buckets=buckets)

        self.request_latency = histogram("request_duration_seconds", "End-to-end request latency.", ("route",))
        self.queue_time = histogram("queue_time_seconds", "Time from arrival to joining the batch.")
        self.time_to_first_token = histogram("time_to_first_token_seconds", "Time from arrival to the first token.")
        self.inter_token_latency = histogram("inter_token_latency_seconds", "Time between tokens of one sample.")
        self.forward_time = histogram(
            "forward_duration_seconds",
            "Model forward time per step (phase: prefill, decode, or mixed: a decode step that also prefills joiners).",
            ("phase",),
        )
        self.batch_size = histogram("batch_size", "Rows per model forward.", ("phase",), buckets=BATCH_BUCKETS)

        self.queued = Gauge(f"{PREFIX}_requests_queued", "Requests waiting for a slot.", ("model",), registry=r)
        self.running = Gauge(f"{PREFIX}_requests_running", "Requests being generated.", ("model",), registry=r)
        self.heartbeat_age = Gauge(
            f"{PREFIX}_engine_heartbeat_age_seconds", "Seconds since the engine loop last ran.", ("model",), registry=r
        )

        self.requests = Counter(
            f"{PREFIX}_requests",
            "Finished requests by HTTP status and reason.",
            ("model", "route", "status", "reason"),
            registry=r,
        )
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens prefilled.", ("model",), registry=r)
        self.generated_tokens = Counter(f"{PREFIX}_generated_tokens", "Tokens generated.", ("model",), registry=r)
        self.finish_reasons = Counter(
            f"{PREFIX}_finish_reasons", "Finished samples by reason.", ("model", "reason"), registry=r
        )
        # Every refusal before generation, wherever it happens: the body guard and the key
        # check (ASGI middleware, which no route sees), validation, admission (429, 503
        # draining) and the routes' own 4xx. `reason` is the error body's `type`; no route
        # label, so paths a scanner makes up cannot grow the series without bound.
        self.rejected = Counter(
            f"{PREFIX}_rejected_requests",
            "Requests refused before generation, by HTTP status and error type.",
            ("model", "status", "reason"),
            registry=r,
        )

    def watch_engine_process(self, pid: int) -> None:
        """The engine's own process (server/engine/process.py): its memory and CPU as
        `promptgen_engine_process_*`, beside the server process's `process_*`."""
        ProcessCollector(namespace=f"{PREFIX}_engine", pid=lambda: pid, registry=self.registry)

    def observe_rejection(self, status: int, reason: str) -> None:
        self.rejected.labels(self.model, str(status), reason).inc()

    def observe_request(self, route: str, status: int, reason: str, seconds: float) -> None:
        self.requests.labels(self.model, route, str(status), reason).inc()
        self.request_latency.labels(self.model, route).observe(seconds)
