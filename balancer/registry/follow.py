"""Keeping a replica's registry in step with the shared store, off the request path.

Requests are served from memory and never wait on the store. The follower subscribes to the
store's change feed, reads the whole store once subscribed (at start-up and after every
reconnection: messages published while it was away are gone), applies each change as it comes,
checks the store's version every tick and reads it all again now and then, so that a missed
message cannot leave a replica stale for long. When the store cannot be reached it says so once
(log, metric, `/readyz`), keeps serving the registry as last read, and tries again until it is
back.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from balancer.logging import get_logger
from balancer.registry.index import WorkerRegistry
from balancer.signals import Signal
from balancer.types import Clock

log = get_logger("balancer.registry")

TICK = 1.0
"""Seconds between version checks (and the longest a missed change goes unnoticed)."""
FULL_READ_INTERVAL = 30.0
RETRY_MIN = 0.1
RETRY_MAX = 2.0


@dataclass(frozen=True, slots=True)
class StoreAvailability:
    """The store became reachable again (`up`) or stopped being (the follower's `error` says
    why)."""

    up: bool


class StoreFollower:
    def __init__(
        self,
        registry: WorkerRegistry,
        *,
        availability: Signal[StoreAvailability] | None = None,
        tick: float = TICK,
        full_read_interval: float = FULL_READ_INTERVAL,
        clock: Clock = time.monotonic,
    ) -> None:
        self.registry = registry
        self.availability = (
            availability if availability is not None else Signal[StoreAvailability]("availability")
        )
        self.tick = tick
        self.full_read_interval = full_read_interval
        self.clock = clock
        self.up = True
        """False while the store cannot be reached: the registry is as last read."""
        self.error: str | None = None
        self._down_since: float | None = None
        self._stopping = False

    def stop(self) -> None:
        """Stop following within a tick. Cancelling `run` alone is not enough: redis-py's reads
        with a timeout can swallow a cancellation (the read is then simply made again)."""
        self._stopping = True

    async def run(self) -> None:
        """Follow the store until stopped (or cancelled)."""
        store = self.registry.store
        wait = RETRY_MIN
        while not self._stopping:
            try:
                async with store.changes(self.tick) as feed:
                    # Subscribed first, then read: nothing published after the read is missed.
                    if await self.registry.refresh(full=True):
                        log.info("registry_refreshed", workers=len(self.registry))
                    self._reached()
                    wait = RETRY_MIN
                    last_full_read = self.clock()
                    async for change in feed:
                        if self._stopping:
                            return
                        if change is not None:
                            await self.registry.apply(change)
                            continue
                        full = self.clock() - last_full_read >= self.full_read_interval
                        if full:
                            last_full_read = self.clock()
                        if await self.registry.refresh(full=full):
                            log.info("registry_refreshed", workers=len(self.registry))
            except Exception as exc:
                self._lost(exc)
            await asyncio.sleep(wait)
            wait = min(wait * 2, RETRY_MAX)

    def _reached(self) -> None:
        if self.up:
            return
        assert self._down_since is not None
        down = self.clock() - self._down_since
        self.up, self.error, self._down_since = True, None, None
        log.info("store_available", down_seconds=round(down, 3), workers=len(self.registry))
        if self.availability:
            self.availability.send(StoreAvailability(True))

    def _lost(self, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if not self.up:
            self.error = error
            return
        self.up, self.error, self._down_since = False, error, self.clock()
        log.error(
            "store_unavailable",
            error=error,
            hint="serving the registry as last read; admin writes answer 503 until it is back",
        )
        if self.availability:
            self.availability.send(StoreAvailability(False))
