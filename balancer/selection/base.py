"""What every selection policy provides. Policies do no I/O and keep only their own state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from balancer.registry.models import Worker


class Policy(Protocol):
    """Picks one worker of a model among candidates the Selector already filtered (selectable,
    not excluded, below their concurrency limit). `now` is monotonic seconds."""

    def pick(self, candidates: Sequence[Worker], now: float) -> Worker: ...

    def observe(self, worker: Worker, seconds: float, now: float) -> None:
        """A worker answered in `seconds` (to the first byte, for streams)."""

    def observe_failure(self, worker: Worker, now: float) -> None: ...

    def forget(self, worker_id: str) -> None:
        """The worker is gone: drop whatever was kept about it."""


class StatelessPolicy:
    """For policies that learn nothing from outcomes."""

    def observe(self, worker: Worker, seconds: float, now: float) -> None:
        pass

    def observe_failure(self, worker: Worker, now: float) -> None:
        pass

    def forget(self, worker_id: str) -> None:
        pass
