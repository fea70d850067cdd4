"""Least requests: of two workers drawn at random, the one with fewer requests in flight per unit
of weight (power of two choices: nearly as good as scanning all, without herding on one).

A worker's requests are ours in flight plus those its engine last reported holding beyond ours
(`Worker.engine_queue`, from its /metrics): other clients' load that our own count cannot see."""

from __future__ import annotations

import random as _random
from collections.abc import Sequence

from balancer.registry.models import Worker
from balancer.selection.base import StatelessPolicy


def two_choices(
    candidates: Sequence[Worker], rng: _random.Random
) -> tuple[Worker, Worker] | Worker:
    n = len(candidates)
    if n == 1:
        return candidates[0]
    # Two distinct indexes; cheaper than rng.sample, which builds a population each call.
    first = rng.randrange(n)
    second = rng.randrange(n - 1)
    if second >= first:
        second += 1
    return candidates[first], candidates[second]


class LeastRequests(StatelessPolicy):
    def __init__(self, rng: _random.Random | None = None) -> None:
        self._rng = rng or _random.Random()

    def pick(self, candidates: Sequence[Worker], now: float) -> Worker:
        drawn = two_choices(candidates, self._rng)
        if isinstance(drawn, Worker):
            return drawn
        a, b = drawn
        load_a = (a.inflight + a.engine_queue + 1) / a.spec.weight
        load_b = (b.inflight + b.engine_queue + 1) / b.spec.weight
        return a if load_a <= load_b else b
