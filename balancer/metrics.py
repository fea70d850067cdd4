"""Prometheus metrics, on an injected CollectorRegistry (each test gets a fresh one).

Label values are bounded: registered model names, worker ids, the API, a status code or a short
reason; never a prompt, a request id or an unknown model's name (those count as `_unknown`).
Children are cached per label tuple so the hot path makes no label look-ups, and dropped with
the worker they describe: events that end after a worker's removal (a stream, a probe) do not
bring its series back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from balancer.events import (
    AttemptFailed,
    AttemptSucceeded,
    HealthChanged,
    Panic,
    Probed,
    Queued,
    RegistryChanged,
    ReplicasChanged,
    RequestFinished,
    Retried,
    StoreAvailability,
)
from balancer.registry import Worker, WorkerRegistry

# `*_created` series double the exposition and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

UNKNOWN_MODEL = "_unknown"

DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OVERHEAD_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
TOKENS_PER_SECOND_BUCKETS = (
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
)
LOOP_LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
STATES = ("healthy", "ejected", "unknown")
_INFLIGHT_HELP = "Requests in flight to a worker."
_UP_HELP = "1 if the worker may be chosen (not ejected), else 0."
_STATE_HELP = "1 for the worker's current health state."


class Metrics:
    """Every metric of the balancer, kept up to date by the events it receives."""

    def __init__(self, registry: CollectorRegistry, workers: WorkerRegistry) -> None:
        self.registry = registry
        self.workers = workers
        self.requests = Counter(
            "balancer_requests_total",
            "Inference requests answered, by endpoint and status code.",
            ["model", "worker", "api", "endpoint", "code"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "balancer_request_duration_seconds",
            "End-to-end time of an inference request, as the client saw it.",
            ["model", "api"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "balancer_upstream_duration_seconds",
            "Time of one attempt on a worker, to its answer (to the first byte for streams).",
            ["model", "worker", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.overhead = Histogram(
            "balancer_overhead_seconds",
            "The balancer's own time in a request: end to end (first byte for streams) minus the "
            "time spent waiting on workers.",
            ["model", "api"],
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "balancer_time_to_first_token_seconds",
            "Time to the first token of a stream.",
            ["model", "worker"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.output_tokens = Counter(
            "balancer_output_tokens_total",
            "Completion tokens generated.",
            ["model", "worker", "estimated"],
            registry=registry,
        )
        self.input_tokens = Counter(
            "balancer_input_tokens_total",
            "Prompt tokens sent.",
            ["model", "worker", "estimated"],
            registry=registry,
        )
        self.tokens_per_second = Histogram(
            "balancer_output_tokens_per_second",
            "Completion tokens over generation time, per request.",
            ["model", "estimated"],
            buckets=TOKENS_PER_SECOND_BUCKETS,
            registry=registry,
        )
        self.probe_duration = Histogram(
            "balancer_probe_duration_seconds",
            "Time of one health probe.",
            ["model", "worker"],
            buckets=PROBE_BUCKETS,
            registry=registry,
        )
        self.probe_failures = Counter(
            "balancer_probe_failures_total",
            "Failed health probes.",
            ["model", "worker"],
            registry=registry,
        )
        self.ejections = Counter(
            "balancer_ejections_total",
            "Workers taken out of service.",
            ["model", "worker", "reason"],
            registry=registry,
        )
        self.retries = Counter(
            "balancer_retries_total",
            "Attempts retried on another worker, by the failure.",
            ["model", "reason"],
            registry=registry,
        )
        self.panics = Counter(
            "balancer_panic_total",
            "Requests routed to an ejected worker because all were.",
            ["model"],
            registry=registry,
        )
        self.queue_wait = Histogram(
            "balancer_queue_wait_seconds",
            "Time requests waited for a worker below its max_concurrency.",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.loop_lag = Histogram(
            "balancer_event_loop_lag_seconds",
            "How late the event loop ran a timer: time requests waited for the balancer itself.",
            buckets=LOOP_LAG_BUCKETS,
            registry=registry,
        )
        self.store_up = Gauge(
            "balancer_store_up",
            "1 while the store (SQLite file or Redis) can be reached, else 0: the registry is "
            "then served as last read and admin writes answer 503.",
            multiprocess_mode="livemin",
            registry=registry,
        )
        self.store_up.set(1)
        self.store_outages = Counter(
            "balancer_store_outages_total",
            "Times the store could no longer be reached.",
            registry=registry,
        )
        self.replicas = Gauge(
            "balancer_replicas",
            "Live balancer replicas sharing the store (by heartbeat), this one included; each "
            "keeps max_concurrency divided by this.",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.replicas.set(1)
        # Several processes (`--workers N`) share their counts through files in
        # PROMETHEUS_MULTIPROC_DIR; a collector reading one process's state at scrape time would
        # then show only the process that happened to answer the scrape, so the state gauges
        # become ordinary gauges that each process refreshes every second.
        self.multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        if self.multiprocess:
            self.inflight = Gauge(
                "balancer_inflight_requests",
                _INFLIGHT_HELP,
                ["model", "worker"],
                multiprocess_mode="livesum",
                registry=registry,
            )
            self.worker_up = Gauge(
                "balancer_worker_up",
                _UP_HELP,
                ["model", "worker"],
                multiprocess_mode="livemax",
                registry=registry,
            )
            self.worker_state = Gauge(
                "balancer_worker_state",
                _STATE_HELP,
                ["model", "worker", "state"],
                multiprocess_mode="livemax",
                registry=registry,
            )
        else:
            registry.register(_WorkerStateCollector(workers))
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _model(self, name: str | None) -> str:
        """The label of a model: its name while registered (label values stay bounded)."""
        if name is None or self.workers.workers_of(name) is None:
            return UNKNOWN_MODEL
        return name

    def exposition(self) -> bytes:
        """The text Prometheus scrapes: every family, with HELP and TYPE even before a value."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        merged.register(_RegisteredSeries(self.workers))
        text = generate_latest(merged)
        # Families no process has written yet are missing from the files: announce them anyway.
        missing = []
        for metric in self.registry.collect():
            name = metric.name + ("_total" if metric.type == "counter" else "")
            if f"# TYPE {name} ".encode() not in text:
                missing.append(
                    f"# HELP {name} {metric.documentation}\n# TYPE {name} {metric.type}\n"
                )
        return text + "".join(missing).encode()

    def refresh_gauges(self) -> None:
        """Multiprocess mode: copy this process's live state into its gauges."""
        for worker in self.workers:
            labels = (worker.model, worker.id)
            self._child(self.inflight, *labels).set(worker.inflight)
            self._child(self.worker_up, *labels).set(0 if worker.status == "ejected" else 1)
            for name in STATES:
                self._child(self.worker_state, *labels, name).set(1 if worker.status == name else 0)

    def process_exiting(self) -> None:
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    def loop_lagged(self, seconds: float) -> None:
        self.loop_lag.observe(seconds)

    def on_request_finished(self, event: RequestFinished) -> None:
        """One inference request, when its last byte is sent."""
        record = event.record
        model = self._model(record.model)
        worker = record.worker or ""
        if worker and self.workers.get(worker) is None:
            # Removed while this request was in flight: its series stay gone, and the request
            # counts as one no worker answered.
            worker = ""
        self._child(
            self.requests, model, worker, record.api, record.endpoint, str(event.status)
        ).inc()
        seconds = event.finished_at - record.started
        self._child(self.request_duration, model, record.api).observe(seconds)
        if record.worker is None:
            return
        until = record.first_byte_at if record.first_byte_at is not None else event.finished_at
        overhead = max(until - record.started - record.upstream_seconds, 0.0)
        self._child(self.overhead, model, record.api).observe(overhead)
        if record.ttft is not None and worker:
            self._child(self.ttft, model, worker).observe(record.ttft)
        estimated = "true" if record.tokens_estimated else "false"
        if record.input_tokens:
            self._child(self.input_tokens, model, worker, estimated).inc(record.input_tokens)
        if record.output_tokens:
            self._child(self.output_tokens, model, worker, estimated).inc(record.output_tokens)
            if record.generation_seconds:
                self._child(self.tokens_per_second, model, estimated).observe(
                    record.output_tokens / record.generation_seconds
                )

    def on_attempt_succeeded(self, event: AttemptSucceeded) -> None:
        worker = event.worker
        if worker.removed:  # ended after its removal: its series stay gone
            return
        self._child(self.upstream_duration, worker.model, worker.id, "success").observe(
            event.seconds
        )

    def on_attempt_failed(self, event: AttemptFailed) -> None:
        worker = event.worker
        if worker.removed:  # ended after its removal: its series stay gone
            return
        self._child(self.upstream_duration, worker.model, worker.id, event.error.reason).observe(
            event.seconds
        )

    def on_retried(self, event: Retried) -> None:
        self._child(self.retries, self._model(event.model), event.reason).inc()

    def on_queued(self, event: Queued) -> None:
        self._child(self.queue_wait, self._model(event.model)).observe(event.seconds)

    def on_panic(self, event: Panic) -> None:
        self._child(self.panics, self._model(event.model)).inc()

    def on_probed(self, event: Probed) -> None:
        worker = event.worker
        if worker.removed:  # ended after its removal: its series stay gone
            return
        self._child(self.probe_duration, worker.model, worker.id).observe(event.seconds)
        if not event.ok:
            self._child(self.probe_failures, worker.model, worker.id).inc()

    def on_health_changed(self, event: HealthChanged) -> None:
        if event.new == "ejected" and not event.worker.removed:
            worker = event.worker
            reason = worker.health.ejection_reason or "probe"
            self._child(self.ejections, worker.model, worker.id, reason).inc()

    def on_store_availability(self, event: StoreAvailability) -> None:
        self.store_up.set(1 if event.up else 0)
        if not event.up:
            self.store_outages.inc()

    def on_replicas_changed(self, event: ReplicasChanged) -> None:
        self.replicas.set(event.replicas)

    def on_registry_changed(self, event: RegistryChanged) -> None:
        worker = event.worker
        if event.change == "registered":
            # Zero-valued series from the start, so alerts and dashboards see them at once.
            self._child(self.probe_failures, worker.model, worker.id)
            self._child(self.ejections, worker.model, worker.id, "probe")
            self._child(self.ejections, worker.model, worker.id, "passive")
            self._child(self.panics, worker.model)
        elif event.change == "removed":
            self._forget(worker, model_gone=event.model_gone)

    def _forget(self, worker: Worker, *, model_gone: bool) -> None:
        """Drop every series of a removed worker: no memory grows with registration churn."""
        for key in list(self._children):
            metric, *labels = key
            if worker.id in labels or (model_gone and labels[0] == worker.model):
                # In multiprocess mode `remove` leaves the series in the files and leaks the
                # child's value (prometheus/client_python#720): the exposition leaves the series
                # out instead, and the child stays for the worker's next registration.
                if not self.multiprocess:
                    metric.remove(*labels)
                del self._children[key]


class _RegisteredSeries(Collector):
    """Multiprocess mode: every process's samples, from the files, without those of workers and
    models this process no longer has registered (prometheus-client keeps every series it ever
    wrote in the files). Another process's removal shows within a store refresh (a second)."""

    def __init__(self, workers: WorkerRegistry) -> None:
        self.workers = workers
        self.files = MultiProcessCollector(None)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        # "": no worker answered; _unknown: no registered model. Both always stay.
        workers = {"", *(worker.id for worker in self.workers)}
        models = {UNKNOWN_MODEL, *self.workers.models()}
        for family in self.files.collect():  # type: ignore[no-untyped-call]
            family.samples = [
                sample
                for sample in family.samples
                if sample.labels.get("worker", "") in workers
                and sample.labels.get("model", UNKNOWN_MODEL) in models
            ]
            yield family

    def describe(self) -> Iterator[Metric]:
        return iter(())


class _WorkerStateCollector(Collector):
    """Gauges that mirror live state, read at scrape time instead of kept in step."""

    def __init__(self, workers: WorkerRegistry) -> None:
        self.workers = workers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        inflight = GaugeMetricFamily(
            "balancer_inflight_requests",
            _INFLIGHT_HELP,
            labels=["model", "worker"],
        )
        up = GaugeMetricFamily(
            "balancer_worker_up",
            _UP_HELP,
            labels=["model", "worker"],
        )
        state = GaugeMetricFamily(
            "balancer_worker_state",
            _STATE_HELP,
            labels=["model", "worker", "state"],
        )
        for worker in self.workers:
            labels = [worker.model, worker.id]
            inflight.add_metric(labels, worker.inflight)
            up.add_metric(labels, 0 if worker.status == "ejected" else 1)
            for name in STATES:
                state.add_metric([*labels, name], 1 if worker.status == name else 0)
        yield inflight
        yield up
        yield state

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
