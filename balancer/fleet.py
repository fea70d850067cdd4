"""The balancer replicas sharing one store, counted by heartbeat.

Each replica announces itself every `interval` seconds, valid for `ttl`; the number alive
divides every worker's `max_concurrency`, so the fleet together stays within it. A replica that
dies is counted until its last heartbeat expires: meanwhile the others keep their smaller share
(the limit is under-used, never exceeded). One that joins takes its share at once, while the
others learn of it at their next heartbeat: for up to `interval` the fleet may have one share
too many in flight (docs/scale-out.md).
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from dataclasses import dataclass

from balancer.logging import get_logger
from balancer.registry import Store
from balancer.signals import Signal

log = get_logger("balancer.fleet")

HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_TTL = 5.0


@dataclass(frozen=True, slots=True)
class ReplicasChanged:
    """The number of live replicas sharing the store changed."""

    replicas: int


def replica_id() -> str:
    """Unique per process, readable in Redis: host (the pod's name), PID, a random tail."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Fleet:
    def __init__(
        self,
        store: Store,
        *,
        changed: Signal[ReplicasChanged] | None = None,
        interval: float = HEARTBEAT_INTERVAL,
        ttl: float = HEARTBEAT_TTL,
    ) -> None:
        self.store = store
        self.changed = changed if changed is not None else Signal[ReplicasChanged]("changed")
        self.interval = interval
        self.ttl = ttl
        self.id = replica_id()
        self.replicas = 1
        self._stopping = False

    async def beat(self) -> None:
        """One heartbeat; the count it returns becomes this replica's."""
        replicas = max(await self.store.heartbeat(self.id, self.ttl), 1)
        if replicas != self.replicas:
            log.info("replicas_changed", replicas=replicas, was=self.replicas, replica=self.id)
            self.replicas = replicas
            if self.changed:
                self.changed.send(ReplicasChanged(replicas))

    async def run(self) -> None:
        """Beat every `interval` after the start-up's own beat, until `leave` (or cancelled).
        While the store is out the last count stands."""
        while not self._stopping:
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
            except Exception as exc:
                # The store follower says when the store is down, once; this is the rest.
                log.debug("heartbeat_failed", error=repr(exc), replica=self.id)

    async def leave(self) -> None:
        """Stop beating and take this replica out of the count at once."""
        self._stopping = True
        try:
            await self.store.leave(self.id)
        except Exception as exc:
            log.warning("replica_leave_failed", error=repr(exc), replica=self.id)
