"""What forwarding reports as it works. Health and metrics subscribe; the core imports neither."""

from __future__ import annotations

from typing import Protocol

from balancer.errors import UpstreamError
from balancer.registry.models import Worker


class ForwardingObserver(Protocol):
    def attempt_succeeded(self, worker: Worker, seconds: float) -> None:
        """A worker answered (a 4xx from it counts: it is alive and said no)."""

    def attempt_failed(self, worker: Worker, error: UpstreamError) -> None:
        """A worker failed: could not connect, timed out, broke a stream, 5xx or 429."""

    def panic(self, model: str, worker: Worker) -> None:
        """Every worker of the model is ejected, so one was chosen anyway."""
