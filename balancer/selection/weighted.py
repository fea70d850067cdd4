"""Smooth weighted round robin, nginx's algorithm: deterministic, and a weight-3 worker gets its
three picks spread out (a b a a b a ...), not in a burst."""

from __future__ import annotations

from collections.abc import Sequence

from balancer.registry.models import Worker
from balancer.selection.base import StatelessPolicy


class Weighted(StatelessPolicy):
    def __init__(self) -> None:
        self._current: dict[str, float] = {}

    def pick(self, candidates: Sequence[Worker], now: float) -> Worker:
        total = 0.0
        best: Worker | None = None
        best_current = 0.0
        for worker in candidates:
            weight = worker.spec.weight
            current = self._current.get(worker.id, 0.0) + weight
            self._current[worker.id] = current
            total += weight
            if best is None or current > best_current:
                best, best_current = worker, current
        assert best is not None
        self._current[best.id] = best_current - total
        return best

    def forget(self, worker_id: str) -> None:
        self._current.pop(worker_id, None)
