"""Least latency: Peak-EWMA, as in Finagle and Linkerd.

Each worker has a latency estimate that jumps up to a slow sample at once and otherwise decays
towards recent samples over `window` seconds (and towards zero while the worker gets no traffic,
so a worker that was slow is tried again). The cost of a worker is that estimate times
(requests in flight + those its engine reported beyond ours + 1), divided by its weight; of two
workers drawn at random the cheaper wins.
A failed attempt counts as a `failure_penalty` sample, so a worker that fails fast does not look
fast. A worker with no sample yet starts at the average of its siblings (neutral), so it gets
real traffic and earns an estimate of its own.
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Sequence

from balancer.registry.models import Worker
from balancer.selection.least_requests import two_choices

DEFAULT_WINDOW = 10.0
DEFAULT_FAILURE_PENALTY = 5.0
DEFAULT_RTT = 0.05
"""The neutral estimate when no worker of the model has a sample yet (seconds)."""


class _Estimate:
    __slots__ = ("stamp", "value")

    def __init__(self, value: float, stamp: float) -> None:
        self.value = value
        self.stamp = stamp


class LeastLatency:
    def __init__(
        self,
        rng: _random.Random | None = None,
        *,
        window: float = DEFAULT_WINDOW,
        failure_penalty: float = DEFAULT_FAILURE_PENALTY,
    ) -> None:
        self._rng = rng or _random.Random()
        self._window = window
        self._failure_penalty = failure_penalty
        self._estimates: dict[str, _Estimate] = {}

    def estimate(self, worker_id: str, now: float) -> float | None:
        """The worker's latency estimate now (seconds), or None before its first sample."""
        estimate = self._estimates.get(worker_id)
        if estimate is None:
            return None
        return estimate.value * math.exp(-max(now - estimate.stamp, 0.0) / self._window)

    def pick(self, candidates: Sequence[Worker], now: float) -> Worker:
        drawn = two_choices(candidates, self._rng)
        if isinstance(drawn, Worker):
            return drawn
        a, b = drawn
        cost_a, cost_b = self._cost(a, candidates, now), self._cost(b, candidates, now)
        return a if cost_a <= cost_b else b

    def _cost(self, worker: Worker, siblings: Sequence[Worker], now: float) -> float:
        latency = self.estimate(worker.id, now)
        if latency is None:
            latency = self._neutral(siblings, now)
        return latency * (worker.inflight + worker.engine_queue + 1) / worker.spec.weight

    def _neutral(self, siblings: Sequence[Worker], now: float) -> float:
        known = [e for w in siblings if (e := self.estimate(w.id, now)) is not None]
        return sum(known) / len(known) if known else DEFAULT_RTT

    def observe(self, worker: Worker, seconds: float, now: float) -> None:
        estimate = self._estimates.get(worker.id)
        if estimate is None:
            self._estimates[worker.id] = _Estimate(seconds, now)
            return
        if seconds > estimate.value:
            estimate.value = seconds  # the peak: react to a slow worker at once
        else:
            decay = math.exp(-max(now - estimate.stamp, 0.0) / self._window)
            estimate.value = estimate.value * decay + seconds * (1.0 - decay)
        estimate.stamp = now

    def observe_failure(self, worker: Worker, now: float) -> None:
        self.observe(worker, self._failure_penalty, now)

    def forget(self, worker_id: str) -> None:
        self._estimates.pop(worker_id, None)
