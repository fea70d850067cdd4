"""What is happening now, per model and per worker, for the console (`/ui`): counts and
latencies over the last minutes, kept in one-second buckets from the events the request path
sends. Prometheus keeps the history; this keeps only what a person looks at right now.

Every receiver is O(1) on the request path; percentiles are computed when the page asks.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

from balancer.events import (
    AttemptFailed,
    AttemptSucceeded,
    RegistryChanged,
    RequestFinished,
)
from balancer.types import Clock

HISTORY_SECONDS = 120
"""How far back the sparklines go."""
WINDOW_SECONDS = 60
"""p50, p99, error ratio, time to first token and tokens per second are over this."""
RATE_SECONDS = 10
"""QPS is over this: short enough to show a change within seconds."""
SAMPLES_PER_SECOND = 64
"""Latencies kept per worker and second for the percentiles: beyond this, a busy second's
percentiles come from its first answers (enough for a person, and bounded in memory)."""


@dataclass(slots=True)
class Bucket:
    second: int
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    """Seconds, per answer (to the first byte for streams)."""
    ttfts: list[float] = field(default_factory=list)
    output_tokens: int = 0
    generation_seconds: float = 0.0


class Series:
    """One-second buckets over the last `HISTORY_SECONDS`."""

    __slots__ = ("buckets", "summary")

    def __init__(self) -> None:
        self.buckets: deque[Bucket] = deque(maxlen=HISTORY_SECONDS)
        self.summary: tuple[int, Summary] | None = None
        """The summary up to a whole second: the same until the next second is over."""

    def at(self, second: int) -> Bucket:
        buckets = self.buckets
        if buckets and buckets[-1].second == second:
            return buckets[-1]
        bucket = Bucket(second)
        buckets.append(bucket)
        return bucket


@dataclass(frozen=True, slots=True)
class Summary:
    """A series, summed up at one instant."""

    qps: float
    error_ratio: float | None
    p50_ms: float | None
    p99_ms: float | None
    ttft_ms: float | None
    tokens_per_second: float | None
    qps_history: list[float]
    """Requests per second, one per second, oldest first, over `HISTORY_SECONDS`."""
    latency_history: list[float | None]
    """Mean latency (ms) per second; None for a second without answers."""

    def as_dict(self) -> dict[str, object]:
        return {
            "qps": round(self.qps, 3),
            "error_ratio": None if self.error_ratio is None else round(self.error_ratio, 4),
            "p50_ms": _ms(self.p50_ms),
            "p99_ms": _ms(self.p99_ms),
            "ttft_ms": _ms(self.ttft_ms),
            "tokens_per_second": None
            if self.tokens_per_second is None
            else round(self.tokens_per_second, 1),
            "history": {"qps": self.qps_history, "latency_ms": self.latency_history},
        }


class LiveStats:
    """Per model: requests and errors (as clients saw them). Per worker: attempts, failures,
    latencies, time to first token and tokens per second."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._models: dict[str, Series] = {}
        self._workers: dict[str, Series] = {}

    def _now(self) -> int:
        return int(self.clock())

    def on_attempt_succeeded(self, event: AttemptSucceeded) -> None:
        series = self._workers.get(event.worker.id)
        if series is None:
            return  # removed while this attempt was on its way
        bucket = series.at(self._now())
        bucket.requests += 1
        if event.answered and len(bucket.latencies) < SAMPLES_PER_SECOND:
            bucket.latencies.append(event.seconds)

    def on_attempt_failed(self, event: AttemptFailed) -> None:
        series = self._workers.get(event.worker.id)
        if series is None:
            return
        bucket = series.at(self._now())
        bucket.requests += 1
        bucket.errors += 1

    def on_request_finished(self, event: RequestFinished) -> None:
        record = event.record
        now = self._now()
        model = self._models.get(record.model) if record.model is not None else None
        if model is not None:
            bucket = model.at(now)
            bucket.requests += 1
            if event.status >= 500:
                bucket.errors += 1
            if len(bucket.latencies) < SAMPLES_PER_SECOND:
                bucket.latencies.append(event.finished_at - record.started)
            if record.ttft is not None and len(bucket.ttfts) < SAMPLES_PER_SECOND:
                bucket.ttfts.append(record.ttft)
        series = self._workers.get(record.worker) if record.worker else None
        if series is None:
            return  # no worker answered, or it was removed meanwhile
        bucket = series.at(now)
        if record.ttft is not None and len(bucket.ttfts) < SAMPLES_PER_SECOND:
            bucket.ttfts.append(record.ttft)
        if record.output_tokens and record.generation_seconds:
            bucket.output_tokens += record.output_tokens
            bucket.generation_seconds += record.generation_seconds

    def on_registry_changed(self, event: RegistryChanged) -> None:
        if event.change == "registered":
            self._workers.setdefault(event.worker.id, Series())
            self._models.setdefault(event.worker.model, Series())
        elif event.change == "removed":
            self._workers.pop(event.worker.id, None)
            if event.model_gone:
                self._models.pop(event.worker.model, None)

    def model(self, name: str) -> Summary:
        return self._summary(self._models.get(name))

    def worker(self, wid: str) -> Summary:
        return self._summary(self._workers.get(wid))

    def _summary(self, series: Series | None) -> Summary:
        # The current second is still filling: rates and history end with the last whole one,
        # so a summary holds for a second, however many pages ask (sorting a busy worker's
        # minute of latencies takes about 0.4 ms).
        last = self._now() - 1
        if series is None:
            return _summarise({}, last)
        if series.summary is None or series.summary[0] != last:
            buckets = {b.second: b for b in series.buckets}
            series.summary = (last, _summarise(buckets, last))
        return series.summary[1]


def _summarise(buckets: dict[int, Bucket], last: int) -> Summary:
    """The summary of a series' buckets (by second), up to second `last`."""
    window = [b for s, b in buckets.items() if last - WINDOW_SECONDS < s <= last]
    recent = sum(b.requests for s, b in buckets.items() if last - RATE_SECONDS < s <= last)
    requests = sum(b.requests for b in window)
    errors = sum(b.errors for b in window)
    latencies = sorted(x for b in window for x in b.latencies)
    ttfts = sorted(x for b in window for x in b.ttfts)
    tokens = sum(b.output_tokens for b in window)
    generating = sum(b.generation_seconds for b in window)
    qps_history: list[float] = []
    latency_history: list[float | None] = []
    for second in range(last - HISTORY_SECONDS + 1, last + 1):
        bucket = buckets.get(second)
        qps_history.append(float(bucket.requests) if bucket else 0.0)
        if bucket and bucket.latencies:
            mean = sum(bucket.latencies) / len(bucket.latencies) * 1000.0
            latency_history.append(round(mean, 1))
        else:
            latency_history.append(None)
    return Summary(
        qps=recent / RATE_SECONDS,
        error_ratio=errors / requests if requests else None,
        p50_ms=_percentile(latencies, 0.50),
        p99_ms=_percentile(latencies, 0.99),
        ttft_ms=_percentile(ttfts, 0.50),
        tokens_per_second=tokens / generating if generating > 0 else None,
        qps_history=qps_history,
        latency_history=latency_history,
    )


def _percentile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank percentile of sorted seconds, in milliseconds."""
    if not ordered:
        return None
    rank = max(math.ceil(q * len(ordered)) - 1, 0)
    return ordered[rank] * 1000.0


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
