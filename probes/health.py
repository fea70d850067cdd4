"""A worker's health: a pure state machine fed by probe results and live-traffic outcomes.

No I/O and no clock of its own: every transition is given `now` (monotonic seconds), so tests
drive it on a fake clock. Each transition returns the change it made, if any, for the caller to
log, count and reschedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

from balancer.config import (
    DEFAULT_BASE_EJECTION_TIME,
    DEFAULT_HEALTHY_THRESHOLD,
    DEFAULT_MAX_EJECTION_PERCENT,
    DEFAULT_MAX_EJECTION_TIME,
    DEFAULT_PASSIVE_FAILURES,
    DEFAULT_UNHEALTHY_THRESHOLD,
    Settings,
)
from balancer.types import WorkerStatus

EjectionReason = Literal["probe", "passive"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthPolicy:
    """How health is judged; its fields are settings of the same names."""

    healthy_threshold: int = DEFAULT_HEALTHY_THRESHOLD
    """Consecutive good probes that bring an ejected worker back."""
    unhealthy_threshold: int = DEFAULT_UNHEALTHY_THRESHOLD
    """Consecutive failed probes that eject a worker."""
    passive_failures: int = DEFAULT_PASSIVE_FAILURES
    """Consecutive failed live requests (connect error, timeout, 5xx) that eject a worker."""
    base_ejection_time: float = DEFAULT_BASE_EJECTION_TIME
    """A passive ejection lasts this times the ejection multiplier; each stretch of this long in
    service takes one off the multiplier."""
    max_ejection_time: float = DEFAULT_MAX_EJECTION_TIME
    max_ejection_percent: float = DEFAULT_MAX_EJECTION_PERCENT
    """At most this share of a model's workers may be ejected by live traffic."""

    @classmethod
    def from_settings(cls, settings: Settings) -> HealthPolicy:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    @property
    def max_multiplier(self) -> int:
        """The multiplier at which ejections reach `max_ejection_time`: it grows no further, so
        a long bad spell does not take longer to forgive than one that just reached the cap."""
        return max(1, math.ceil(self.max_ejection_time / self.base_ejection_time))


@dataclass(frozen=True, slots=True)
class Transition:
    old: WorkerStatus
    new: WorkerStatus
    reason: str


class WorkerHealth:
    """The health of one worker."""

    __slots__ = (
        "_decay_from",
        "_multiplier",
        "consecutive_failures",
        "consecutive_successes",
        "ejected_until",
        "ejection_reason",
        "ejections",
        "last_ejection",
        "last_error",
        "last_probe_at",
        "last_probe_latency_ms",
        "passive_failures",
        "policy",
        "since",
        "status",
    )

    def __init__(self, policy: HealthPolicy, now: float) -> None:
        self.policy = policy
        self.status: WorkerStatus = "unknown"
        self.since = now
        self.consecutive_failures = 0
        self.consecutive_successes = 0
        self.passive_failures = 0
        self.last_probe_at: float | None = None
        self.last_probe_latency_ms: float | None = None
        self.last_error: str | None = None
        self.ejections = 0
        """Every ejection so far, for people; `ejection_multiplier` sets their length."""
        self.ejection_reason: EjectionReason | None = None
        self.last_ejection: str | None = None
        """Why it was last ejected, in words; kept after it is back in service."""
        self.ejected_until: float | None = None
        self._multiplier = 0
        self._decay_from: float | None = now
        """Since when the worker has been in service (None while it is ejected)."""

    def probe_succeeded(self, now: float, latency_ms: float) -> Transition | None:
        self.last_probe_at = now
        self.last_probe_latency_ms = latency_ms
        self.consecutive_failures = 0
        self.consecutive_successes += 1
        if self.status == "unknown":
            # A new worker that answers is in service at once: no reason to wait for a second.
            return self._move("healthy", now, "first probe succeeded")
        if self.status == "ejected":
            if self.ejected_until is not None and now < self.ejected_until:
                return None
            if self.consecutive_successes >= self.policy.healthy_threshold:
                return self._move("healthy", now, f"{self.consecutive_successes} probes succeeded")
        return None

    def probe_failed(self, now: float, error: str) -> Transition | None:
        self.last_probe_at = now
        self.last_error = error
        self.consecutive_successes = 0
        self.consecutive_failures += 1
        if (
            self.status != "ejected"
            and self.consecutive_failures >= self.policy.unhealthy_threshold
        ):
            return self._eject(now, "probe", f"{self.consecutive_failures} probes failed: {error}")
        return None

    def request_succeeded(self) -> None:
        self.passive_failures = 0

    def request_failed(
        self, now: float, error: str, siblings: Sequence[WorkerHealth]
    ) -> Transition | None:
        """A live request failed. `siblings` is every worker of the model, this one included."""
        self.passive_failures += 1
        self.last_error = error
        if self.status == "ejected" or self.passive_failures < self.policy.passive_failures:
            return None
        if not may_eject(siblings, self.policy.max_ejection_percent):
            return None
        return self._eject(
            now, "passive", f"{self.passive_failures} requests failed in a row: {error}"
        )

    def ejection_multiplier(self, now: float) -> int:
        """The ejection multiplier at `now`, as Envoy's ejection backoff: each ejection adds one
        (up to `policy.max_multiplier`), each `base_ejection_time` the worker then stays in
        service takes one off. So one bad hour costs a few minutes of longer ejections, not
        300 s ejections for the rest of the worker's life."""
        if self._decay_from is None:
            return self._multiplier
        steps = int((now - self._decay_from) // self.policy.base_ejection_time)
        return max(0, self._multiplier - steps)

    def _eject(self, now: float, reason: EjectionReason, why: str) -> Transition:
        """Probe ejections last until probes succeed; passive ones for a time that grows with
        the multiplier. Both raise the multiplier."""
        self._multiplier = min(self.ejection_multiplier(now) + 1, self.policy.max_multiplier)
        self._decay_from = None
        self.ejections += 1
        self.ejection_reason = reason
        self.last_ejection = why
        self.ejected_until = None
        if reason == "passive":
            self.ejected_until = now + min(
                self.policy.base_ejection_time * self._multiplier, self.policy.max_ejection_time
            )
        self.consecutive_successes = 0
        self.passive_failures = 0
        return self._move("ejected", now, why)

    def _move(self, new: WorkerStatus, now: float, reason: str) -> Transition:
        transition = Transition(self.status, new, reason)
        self.status = new
        self.since = now
        if new == "healthy":
            if transition.old == "ejected":
                self._decay_from = now
                self.passive_failures = 0
            # From unknown, requests that failed before the first probe answered still count.
            self.ejection_reason = None
            self.ejected_until = None
        return transition


def may_eject(siblings: Sequence[WorkerHealth], max_percent: float) -> bool:
    """Whether one more of these workers may be ejected without passing `max_percent`."""
    ejected = sum(1 for h in siblings if h.status == "ejected")
    return (ejected + 1) * 100.0 <= max_percent * len(siblings)
