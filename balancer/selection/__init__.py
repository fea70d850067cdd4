"""Choosing a worker: which are selectable (health, Retry-After, capacity), then the model's policy
picks one. The Selector also passes every attempt's outcome to that policy."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from balancer.config import (
    DEFAULT_BALANCE_ABS_THRESHOLD,
    DEFAULT_BALANCE_REL_THRESHOLD,
    DEFAULT_CACHE_THRESHOLD,
    DEFAULT_STRATEGY,
)
from balancer.events import AttemptFailed, AttemptSucceeded, RegistryChanged
from balancer.registry.models import Worker
from balancer.selection.base import Policy
from balancer.selection.cache_aware import CacheAware
from balancer.selection.least_latency import LeastLatency
from balancer.selection.least_requests import LeastRequests
from balancer.selection.random_pick import RandomPick
from balancer.selection.round_robin import RoundRobin
from balancer.selection.sessions import Sessions
from balancer.selection.weighted import Weighted
from balancer.types import Clock, Strategy


@dataclass(frozen=True, slots=True)
class Tuning:
    """The settings a policy is made with (BALANCER_CACHE_THRESHOLD,
    BALANCER_BALANCE_ABS_THRESHOLD, BALANCER_BALANCE_REL_THRESHOLD)."""

    cache_threshold: float = DEFAULT_CACHE_THRESHOLD
    balance_abs: float = DEFAULT_BALANCE_ABS_THRESHOLD
    balance_rel: float = DEFAULT_BALANCE_REL_THRESHOLD


POLICIES: dict[Strategy, Callable[[random.Random, Tuning], Policy]] = {
    "least_latency": lambda rng, tuning: LeastLatency(rng),
    "weighted": lambda rng, tuning: Weighted(),
    "round_robin": lambda rng, tuning: RoundRobin(),
    "random": lambda rng, tuning: RandomPick(rng),
    "least_requests": lambda rng, tuning: LeastRequests(rng),
    "cache_aware": lambda rng, tuning: CacheAware(
        rng,
        cache_threshold=tuning.cache_threshold,
        balance_abs=tuning.balance_abs,
        balance_rel=tuning.balance_rel,
    ),
}
"""Every strategy name (`balancer.types.Strategy`) and how to make its policy for one model."""

Why = Literal["", "exhausted", "at_capacity", "backing_off"]


@dataclass(frozen=True, slots=True)
class Choice:
    worker: Worker | None
    panic: bool = False
    why: Why = ""
    """Why there is no worker: all tried (`exhausted`), all at `max_concurrency`, or all
    `backing_off` after a 429 with Retry-After."""


class Selector:
    """One policy instance per model; receives every attempt's outcome and passes it on."""

    def __init__(
        self,
        default_strategy: Strategy = DEFAULT_STRATEGY,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        sessions: Sessions | None = None,
        cache_threshold: float = DEFAULT_CACHE_THRESHOLD,
        balance_abs: float = DEFAULT_BALANCE_ABS_THRESHOLD,
        balance_rel: float = DEFAULT_BALANCE_REL_THRESHOLD,
    ) -> None:
        if default_strategy not in POLICIES:
            raise ValueError(f"unknown strategy {default_strategy!r}")
        self.default_strategy = default_strategy
        self.clock = clock
        self._rng = rng or random.Random()
        self._policies: dict[str, tuple[Strategy, Policy]] = {}
        self._tuning = Tuning(cache_threshold, balance_abs, balance_rel)
        self.sessions = (
            sessions
            if sessions is not None
            else Sessions(balance_abs=balance_abs, balance_rel=balance_rel)
        )

    def policy(self, model: str, strategy: Strategy | None = None) -> Policy:
        """The model's policy, created (or replaced, when the strategy changed) on demand."""
        wanted = strategy or self.default_strategy
        current = self._policies.get(model)
        if current is None or current[0] != wanted:
            current = self._policies[model] = (wanted, POLICIES[wanted](self._rng, self._tuning))
        return current[1]

    def choose(
        self,
        model: str,
        workers: Sequence[Worker],
        *,
        exclude: Collection[str] = (),
        accept: Callable[[Worker], bool] | None = None,
        strategy: Strategy | None = None,
        key: str | None = None,
        session: str | None = None,
    ) -> Choice:
        """A worker for the next attempt, or why there is none. `key` is the request's prompt,
        for policies that route on it (`cache_aware`); a `session` sticks to its last worker.

        Draining workers are never chosen. Ejected workers are skipped unless every candidate
        is ejected ("panic mode"): then routing to a possibly-down worker beats failing every
        request.
        """
        now = self.clock()
        candidates = [
            w
            for w in workers
            if w.id not in exclude and not w.draining and (accept is None or accept(w))
        ]
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
        if session is not None:
            home = self.sessions.home(model, session, free, now)
            if home is None or self.sessions.overloaded(home, free):
                others = [w for w in free if w is not home] or free
                home = self._pick(model, strategy, others, now, key)
            self.sessions.remember(model, session, home, now)
            return Choice(home, panic)
        return Choice(self._pick(model, strategy, free, now, key), panic)

    def _pick(
        self,
        model: str,
        strategy: Strategy | None,
        free: Sequence[Worker],
        now: float,
        key: str | None,
    ) -> Worker:
        policy = self.policy(model, strategy)
        if key is not None and isinstance(policy, CacheAware):
            return policy.pick_for(key, free, now)
        return policy.pick(free, now)

    def routes_on_prompts(self, model: str, strategy: Strategy | None) -> bool:
        """Whether the model's policy wants each request's prompt (`choose(key=...)`)."""
        return (strategy or self.default_strategy) == "cache_aware"

    def on_attempt_succeeded(self, event: AttemptSucceeded) -> None:
        current = self._policies.get(event.worker.model)
        if current is not None and event.answered:
            current[1].observe(event.worker, event.seconds, self.clock())

    def on_attempt_failed(self, event: AttemptFailed) -> None:
        if event.error.upstream_status == 429:
            return  # "slow down" is no failure of the worker's: Retry-After keeps it out
        current = self._policies.get(event.worker.model)
        if current is not None:
            current[1].observe_failure(event.worker, self.clock())

    def on_registry_changed(self, event: RegistryChanged) -> None:
        """Drop what is kept about a removed worker (and its model's policy with the last one)."""
        if event.change != "removed":
            return
        if event.model_gone:
            self._policies.pop(event.worker.model, None)
        elif (current := self._policies.get(event.worker.model)) is not None:
            current[1].forget(event.worker.id)


__all__ = ["POLICIES", "Choice", "Policy", "Selector"]
