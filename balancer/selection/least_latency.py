"""Least latency: Peak-EWMA, as in Finagle and Linkerd.

Each worker has a latency estimate that jumps up to a slow sample at once and otherwise decays
towards recent samples over `window` seconds (and towards zero while the worker gets no traffic,
so a worker that was slow is tried again). The cost of a worker is that estimate times
(requests in flight + those its engine reported beyond ours + 1), divided by its weight. With up
to `scan_up_to` candidates every one is costed and the cheapest wins (ties broken at random);
with more, the cheaper of two drawn at random (power of two choices: a scan costs a pick O(n),
and one process's view of a large pool is stale enough that herding on its minimum hurts).
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
DEFAULT_SCAN_UP_TO = 8
"""Candidates up to which every one is costed. With few workers, two random ones often miss
the one idle worker: scanning cut the selection simulation's p99 (5 workers) from 3.4 s to
1.2 s (docs/balancing.md)."""


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
        scan_up_to: int = DEFAULT_SCAN_UP_TO,
    ) -> None:
        self._rng = rng or _random.Random()
        self._window = window
        self._failure_penalty = failure_penalty
        self._scan_up_to = scan_up_to
        self._estimates: dict[str, _Estimate] = {}

    def estimate(self, worker_id: str, now: float) -> float | None:
        """The worker's latency estimate now (seconds), or None before its first sample."""
        estimate = self._estimates.get(worker_id)
        if estimate is None:
            return None
        return estimate.value * math.exp(-max(now - estimate.stamp, 0.0) / self._window)

    def pick(self, candidates: Sequence[Worker], now: float) -> Worker:
        n = len(candidates)
        if 2 < n <= self._scan_up_to:
            latencies = [self.estimate(w.id, now) for w in candidates]
            neutral = self._neutral(candidates, now) if None in latencies else 0.0
            costs = [
                _cost(w, neutral if e is None else e)
                for w, e in zip(candidates, latencies, strict=True)
            ]
            # From a random start, so that the first of equally cheap workers is any of them.
            start = self._rng.randrange(n)
            best = min(range(start, start + n), key=lambda i: costs[i % n])
            return candidates[best % n]
        drawn = two_choices(candidates, self._rng)
        if isinstance(drawn, Worker):
            return drawn
        a, b = drawn
        latency_a, latency_b = self.estimate(a.id, now), self.estimate(b.id, now)
        if latency_a is None or latency_b is None:
            # The siblings' average only when needed: it costs a look-up per sibling.
            neutral = self._neutral(candidates, now)
            latency_a = neutral if latency_a is None else latency_a
            latency_b = neutral if latency_b is None else latency_b
        return a if _cost(a, latency_a) <= _cost(b, latency_b) else b

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


def _cost(worker: Worker, latency: float) -> float:
    return latency * (worker.inflight + worker.engine_queue + 1) / worker.spec.weight
