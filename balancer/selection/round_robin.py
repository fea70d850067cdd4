"""Round robin: each candidate in turn."""

from __future__ import annotations

from collections.abc import Sequence

from balancer.registry.models import Worker


class RoundRobin:
    def __init__(self) -> None:
        self._next = 0

    def pick(self, candidates: Sequence[Worker]) -> Worker:
        worker = candidates[self._next % len(candidates)]
        self._next += 1
        return worker
