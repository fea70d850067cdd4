"""A worker's in-flight slot, held for one attempt (or for the whole of a relayed stream)."""

from __future__ import annotations

from collections.abc import Callable

from balancer.errors import UpstreamError
from balancer.events import AttemptFailed, AttemptStarted, AttemptSucceeded, Events, RequestRecord
from balancer.registry.models import Worker
from balancer.types import Clock


class Lease:
    """Taken before the first await and released exactly once, whichever path ends the attempt.

    It reports the attempt's outcome (`attempt_succeeded`, `attempt_failed`) and writes the time
    spent on the worker to the request's record.
    """

    __slots__ = (
        "_clock",
        "_events",
        "_on_release",
        "_released",
        "answered",
        "detached",
        "record",
        "started",
        "worker",
    )

    def __init__(
        self,
        worker: Worker,
        record: RequestRecord,
        *,
        clock: Clock,
        events: Events,
        on_release: Callable[[Worker], None] | None = None,
    ) -> None:
        worker.inflight += 1
        self.worker = worker
        self.record = record
        self._clock = clock
        self._events = events
        self._on_release = on_release
        self.started = clock()
        self.detached = False
        """Set once a stream took the lease over from its attempt: the stream releases it."""
        self.answered = True
        """Cleared when the worker's answer is a refusal of the caller's own mistake (a 400, a
        422), relayed as it is: alive, but no measure of its speed."""
        self._released = False
        if events.attempt_started:
            events.attempt_started.send(AttemptStarted(worker))

    def succeeded(self, *, answered: bool | None = None) -> None:
        """The worker answered: record the time since the attempt started (to the first byte
        for streams, the whole call otherwise). `answered=False` (default: the lease's own
        `answered`): it refused the caller's own mistake, which says it is alive but nothing of
        its speed."""
        if answered is None:
            answered = self.answered
        seconds = self._clock() - self.started
        if answered:
            self.worker.latency_ms = seconds * 1000.0
        record = self.record
        record.upstream_seconds += seconds
        record.worker = self.worker.id
        record.generation_seconds = seconds  # a stream replaces it when it ends
        if self._events.attempt_succeeded:
            self._events.attempt_succeeded.send(AttemptSucceeded(self.worker, seconds, answered))

    def failed(self, error: UpstreamError) -> None:
        seconds = self._clock() - self.started
        if not self.detached:
            self.record.upstream_seconds += seconds
        if self._events.attempt_failed:
            self._events.attempt_failed.send(AttemptFailed(self.worker, error, seconds))

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.worker.inflight -= 1
            if self._on_release is not None:
                self._on_release(self.worker)
