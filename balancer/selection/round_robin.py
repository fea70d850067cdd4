"""Round robin: each worker in turn, `weight` picks in a row (rounded, at least one)."""

from __future__ import annotations

from collections.abc import Sequence

from balancer.registry.models import Worker
from balancer.selection.base import StatelessPolicy


class RoundRobin(StatelessPolicy):
    def __init__(self) -> None:
        self._next = 0
        self._streak = 0

    def pick(self, candidates: Sequence[Worker], now: float) -> Worker:
        worker = candidates[self._next % len(candidates)]
        self._streak += 1
        if self._streak >= max(1, round(worker.spec.weight)):
            self._streak = 0
            self._next += 1
        return worker
