"""Feeds probe results and live-traffic outcomes to each worker's state machine, and reports
every change of state (a log event, and `health_changed` for the scheduler and metrics)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from balancer.events import (
    AttemptFailed,
    AttemptSucceeded,
    Events,
    HealthChanged,
    HealthSource,
    Probed,
)
from balancer.logging import get_logger, redact_text, redact_url
from balancer.registry import Worker, WorkerRegistry
from balancer.types import Clock
from probes.checks import ProbeResult
from probes.health import Transition

log = get_logger("probes")


class HealthMonitor:
    """Live failures eject a worker without waiting for a probe, as Envoy's outlier detection."""

    def __init__(
        self, registry: WorkerRegistry, events: Events, clock: Clock = time.monotonic
    ) -> None:
        self.registry = registry
        self.events = events
        self.clock = clock

    def probe_result(self, worker: Worker, result: ProbeResult) -> Transition | None:
        now = self.clock()
        if self.events.probed:
            self.events.probed.send(
                Probed(worker, result.ok, result.latency_ms / 1000.0, result.error)
            )
        if result.ok:
            transition = worker.health.probe_succeeded(now, result.latency_ms)
        else:
            transition = worker.health.probe_failed(now, result.error or "probe failed")
        self._report(worker, transition, "probe")
        return transition

    def on_attempt_succeeded(self, event: AttemptSucceeded) -> None:
        event.worker.health.request_succeeded()

    def on_attempt_failed(self, event: AttemptFailed) -> None:
        worker, error = event.worker, event.error
        if error.upstream_status == 429:
            return  # "Slow down", not "I am broken".
        siblings = [w.health for w in self.registry.workers_of(worker.model) or [worker]]
        transition = worker.health.request_failed(self.clock(), error.message, siblings)
        self._report(worker, transition, "passive")

    def _report(self, worker: Worker, transition: Transition | None, source: HealthSource) -> None:
        if transition is None:
            return
        health = worker.health
        if transition.new == "ejected":
            log.warning(
                "worker_ejected",
                model=worker.model,
                worker=worker.id,
                source=source,
                reason=transition.reason,
                ejections=health.ejections,
                until=self.wall_time(health.ejected_until),
            )
        elif transition.old == "ejected":
            log.info(
                "worker_recovered", model=worker.model, worker=worker.id, reason=transition.reason
            )
        else:
            log.info(
                "worker_healthy", model=worker.model, worker=worker.id, reason=transition.reason
            )
        if self.events.health_changed:
            self.events.health_changed.send(
                HealthChanged(worker, transition.old, transition.new, transition.reason, source)
            )

    def wall_time(self, monotonic: float | None) -> str | None:
        """A monotonic instant of ours as an ISO-8601 UTC time, for people."""
        if monotonic is None:
            return None
        wall = time.time() - (self.clock() - monotonic)
        return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")

    def describe(self, worker: Worker) -> dict[str, Any]:
        health = worker.health
        latency = health.last_probe_latency_ms
        return {
            "id": worker.id,
            "req_url_template": redact_url(worker.spec.req_url_template),
            "status": health.status,
            "since": self.wall_time(health.since),
            "consecutive_failures": health.consecutive_failures,
            "passive_failures": health.passive_failures,
            "last_probe_at": self.wall_time(health.last_probe_at),
            "last_probe_latency_ms": None if latency is None else round(latency, 3),
            "last_error": health.last_error and redact_text(health.last_error),
            "ejections": health.ejections,
            "ejection_multiplier": health.ejection_multiplier(self.clock()),
            "ejection_reason": health.ejection_reason,
            "ejected_until": self.wall_time(health.ejected_until),
        }
