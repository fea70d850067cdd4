"""Feeds probe results and live-traffic outcomes to each worker's state machine, and reports
every change of state (a log event, and to listeners such as the scheduler and metrics)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from balancer.errors import UpstreamError
from balancer.events import NullObserver
from balancer.logging import get_logger
from balancer.registry import Registry, Worker
from balancer.types import Clock
from probes.checks import ProbeResult
from probes.health import Transition

log = get_logger("probes")

TransitionListener = Callable[[Worker, Transition], None]


class HealthMonitor(NullObserver):
    """Also a ForwardingObserver: live failures eject a worker without waiting for a probe."""

    def __init__(self, registry: Registry, clock: Clock = time.monotonic) -> None:
        self.registry = registry
        self.clock = clock
        self.listeners: list[TransitionListener] = []
        self.probe_listeners: list[Callable[[Worker, ProbeResult], None]] = []

    def probe_result(self, worker: Worker, result: ProbeResult) -> Transition | None:
        now = self.clock()
        for listener in self.probe_listeners:
            listener(worker, result)
        if result.ok:
            transition = worker.health.probe_succeeded(now, result.latency_ms)
        else:
            transition = worker.health.probe_failed(now, result.error or "probe failed")
        self._report(worker, transition, "probe")
        return transition

    def attempt_succeeded(self, worker: Worker, seconds: float) -> None:
        worker.health.request_succeeded()

    def attempt_failed(self, worker: Worker, error: UpstreamError, seconds: float) -> None:
        status = error.upstream_status
        if status is not None and status < 500:
            return  # 429 says "slow down", not "I am broken".
        siblings = [w.health for w in self.registry.workers_of(worker.model) or [worker]]
        transition = worker.health.request_failed(self.clock(), error.message, siblings)
        self._report(worker, transition, "passive")

    def _report(self, worker: Worker, transition: Transition | None, source: str) -> None:
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
        for listener in self.listeners:
            listener(worker, transition)

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
            "req_url_template": worker.spec.req_url_template,
            "status": health.status,
            "since": self.wall_time(health.since),
            "consecutive_failures": health.consecutive_failures,
            "passive_failures": health.passive_failures,
            "last_probe_at": self.wall_time(health.last_probe_at),
            "last_probe_latency_ms": None if latency is None else round(latency, 3),
            "last_error": health.last_error,
            "ejections": health.ejections,
            "ejection_reason": health.ejection_reason,
            "ejected_until": self.wall_time(health.ejected_until),
        }
