"""A retry budget, as in Linkerd and Envoy: over a sliding window, retries may add at most
`ratio` to the requests, plus `min_per_second` so that a quiet model can still retry. It stops
retry storms when a whole model is sick. Pure, on an injected clock."""

from __future__ import annotations

import math
from collections import deque

from balancer.config import DEFAULT_RETRY_BUDGET_MIN_PER_SECOND, DEFAULT_RETRY_BUDGET_RATIO

DEFAULT_WINDOW = 10


class RetryBudget:
    __slots__ = ("_buckets", "_requests", "_retries", "min_per_second", "ratio", "window")

    def __init__(
        self,
        *,
        ratio: float = DEFAULT_RETRY_BUDGET_RATIO,
        min_per_second: float = DEFAULT_RETRY_BUDGET_MIN_PER_SECOND,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        # One bucket per second: [second, requests, retries]; totals kept alongside, so each
        # call is O(1) amortised.
        self._buckets: deque[list[int]] = deque()
        self._requests = 0
        self._retries = 0

    def _bucket(self, now: float) -> list[int]:
        second = math.floor(now)
        while self._buckets and self._buckets[0][0] <= second - self.window:
            _, requests, retries = self._buckets.popleft()
            self._requests -= requests
            self._retries -= retries
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        return self._buckets[-1]

    def deposit(self, now: float) -> None:
        """A request arrived."""
        self._bucket(now)[1] += 1
        self._requests += 1

    def try_withdraw(self, now: float) -> bool:
        """Whether a retry may go ahead now; if so it is counted."""
        bucket = self._bucket(now)
        allowed = self.ratio * self._requests + self.min_per_second * self.window
        if self._retries + 1 > allowed:
            return False
        bucket[2] += 1
        self._retries += 1
        return True
