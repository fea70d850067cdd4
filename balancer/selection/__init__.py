"""Choosing a worker: which are selectable (health, Retry-After, capacity), then the model's policy
picks one. The Selector also passes every attempt's outcome to that policy."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from balancer.errors import UpstreamError
from balancer.events import NullObserver
from balancer.registry.models import Worker
from balancer.selection.base import Policy
from balancer.selection.least_latency import LeastLatency
from balancer.selection.least_requests import LeastRequests
from balancer.selection.random_pick import Random
from balancer.selection.round_robin import RoundRobin
from balancer.selection.weighted import Weighted
from balancer.types import Clock

POLICIES: dict[str, Callable[[random.Random], Policy]] = {
    "least_latency": lambda rng: LeastLatency(rng),
    "weighted": lambda rng: Weighted(),
    "round_robin": lambda rng: RoundRobin(),
    "random": lambda rng: Random(rng),
    "least_requests": lambda rng: LeastRequests(rng),
}
DEFAULT_STRATEGY = "least_latency"

Why = Literal["", "exhausted", "at_capacity", "backing_off"]


@dataclass(frozen=True, slots=True)
class Choice:
    worker: Worker | None
    panic: bool = False
    why: Why = ""
    """Why there is no worker: all tried (`exhausted`), all at `max_concurrency`, or all
    `backing_off` after a 429 with Retry-After."""


class Selector(NullObserver):
    """One policy instance per model; also a ForwardingObserver feeding outcomes to it."""

    def __init__(
        self,
        default_strategy: str = DEFAULT_STRATEGY,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if default_strategy not in POLICIES:
            raise ValueError(f"unknown strategy {default_strategy!r}")
        self.default_strategy = default_strategy
        self.clock = clock
        self._rng = rng or random.Random()
        self._policies: dict[str, tuple[str, Policy]] = {}

    def policy(self, model: str, strategy: str | None = None) -> Policy:
        """The model's policy, created (or replaced, when the strategy changed) on demand."""
        wanted = strategy or self.default_strategy
        current = self._policies.get(model)
        if current is None or current[0] != wanted:
            current = self._policies[model] = (wanted, POLICIES[wanted](self._rng))
        return current[1]

    def choose(
        self,
        model: str,
        workers: Sequence[Worker],
        *,
        exclude: Collection[str] = (),
        accept: Callable[[Worker], bool] | None = None,
        strategy: str | None = None,
    ) -> Choice:
        """A worker for the next attempt, or why there is none.

        Ejected workers are skipped unless every candidate is ejected ("panic mode"): then
        routing to a possibly-down worker beats failing every request.
        """
        now = self.clock()
        candidates = [w for w in workers if w.id not in exclude and (accept is None or accept(w))]
        if not candidates:
            return Choice(None, why="exhausted")
        ready = [w for w in candidates if w.skip_until <= now]
        if not ready:
            return Choice(None, why="backing_off")
        selectable = [w for w in ready if w.status != "ejected"]
        panic = not selectable
        free = [w for w in (selectable or ready) if not w.at_capacity]
        if not free:
            return Choice(None, panic, why="at_capacity")
        return Choice(self.policy(model, strategy).pick(free, now), panic)

    def attempt_succeeded(self, worker: Worker, seconds: float) -> None:
        current = self._policies.get(worker.model)
        if current is not None:
            current[1].observe(worker, seconds, self.clock())

    def attempt_failed(self, worker: Worker, error: UpstreamError, seconds: float) -> None:
        current = self._policies.get(worker.model)
        if current is not None:
            current[1].observe_failure(worker, self.clock())

    def forget(self, worker: Worker, *, last_of_model: bool) -> None:
        """Drop what is kept about a removed worker (and its model's policy with the last one)."""
        if last_of_model:
            self._policies.pop(worker.model, None)
        elif (current := self._policies.get(worker.model)) is not None:
            current[1].forget(worker.id)


__all__ = ["DEFAULT_STRATEGY", "POLICIES", "Choice", "Policy", "Selector"]
