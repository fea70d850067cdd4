"""What forwarding reports as it works. Health, selection and metrics subscribe; the core imports
none of them."""

from __future__ import annotations

from typing import Protocol

from balancer.errors import UpstreamError
from balancer.registry.models import Worker


class ForwardingObserver(Protocol):
    def attempt_succeeded(self, worker: Worker, seconds: float) -> None:
        """A worker answered (a 4xx from it counts: it is alive and said no). `seconds` is to
        the first byte for streams, the whole call otherwise."""

    def attempt_failed(self, worker: Worker, error: UpstreamError, seconds: float) -> None:
        """A worker failed after `seconds`: could not connect, timed out, broke a stream, 5xx
        or 429."""

    def retried(self, model: str, reason: str) -> None:
        """A failed attempt is being retried on another worker; `reason` names the failure."""

    def queued(self, model: str, seconds: float) -> None:
        """A request waited `seconds` for a worker below its max_concurrency."""

    def panic(self, model: str, worker: Worker) -> None:
        """Every worker of the model is ejected, so one was chosen anyway."""


class NullObserver:
    """Ignores every event; observers override the ones they care about."""

    def attempt_succeeded(self, worker: Worker, seconds: float) -> None:
        pass

    def attempt_failed(self, worker: Worker, error: UpstreamError, seconds: float) -> None:
        pass

    def retried(self, model: str, reason: str) -> None:
        pass

    def queued(self, model: str, seconds: float) -> None:
        pass

    def panic(self, model: str, worker: Worker) -> None:
        pass
