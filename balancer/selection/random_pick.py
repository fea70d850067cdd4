"""Random, in proportion to weight."""

from __future__ import annotations

import random as _random
from collections.abc import Sequence

from balancer.registry.models import Worker
from balancer.selection.base import StatelessPolicy


class RandomPick(StatelessPolicy):
    def __init__(self, rng: _random.Random | None = None) -> None:
        self._rng = rng or _random.Random()

    def pick(self, candidates: Sequence[Worker], now: float) -> Worker:
        if len(candidates) == 1:
            return candidates[0]
        return self._rng.choices(candidates, weights=[w.spec.weight for w in candidates])[0]
