"""Draining a worker: it takes no new request, the ones in flight finish, then it is removed.

For rolling upgrades: register the new version, shift weight to it, drain the old one; no
request is dropped. A draining worker is only left out of selection (`Worker.draining`), so
everything else about it (probes, listing, metrics) goes on until it is removed.

Draining is kept in memory by the process that was asked: with `--workers N`, the other
processes go on sending to the worker until the removal reaches them through the store.
"""

from __future__ import annotations

import asyncio

from balancer.errors import StoreUnavailable, WorkerNotFound
from balancer.logging import get_logger
from balancer.registry import Worker, WorkerRegistry

log = get_logger("balancer.admin")

POLL_INTERVAL = 0.05
"""Seconds between looks at a draining worker's requests in flight."""
STORE_RETRY_INTERVAL = 1.0
"""Seconds before trying again a removal the store refused."""


class Drainer:
    def __init__(self, registry: WorkerRegistry, *, poll_interval: float = POLL_INTERVAL) -> None:
        self.registry = registry
        self.poll_interval = poll_interval
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def drain(self, worker: Worker) -> bool:
        """Start draining `worker`; False if it already was."""
        if worker.draining and worker.id in self._tasks:
            return False
        worker.draining = True
        task = asyncio.create_task(self._remove_when_idle(worker))
        self._tasks[worker.id] = task
        task.add_done_callback(lambda done: self._forget(worker.id, done))
        log.info("worker_draining", model=worker.model, worker=worker.id, inflight=worker.inflight)
        return True

    def cancel(self, worker: Worker) -> None:
        """Take the worker back into service (it was registered again)."""
        worker.draining = False
        task = self._tasks.pop(worker.id, None)
        if task is not None:
            task.cancel()
            log.info("worker_drain_cancelled", model=worker.model, worker=worker.id)

    async def _remove_when_idle(self, worker: Worker) -> None:
        while not worker.removed:
            # Requests already on their way to it hold a slot (`Lease`) until their last byte.
            if worker.inflight > 0:
                await asyncio.sleep(self.poll_interval)
                continue
            try:
                await self.registry.remove(worker.model, worker.spec.req_url_template)
            except StoreUnavailable as exc:
                log.error("worker_drain_store_failed", worker=worker.id, error=exc.message)
                await asyncio.sleep(STORE_RETRY_INTERVAL)
                continue
            except WorkerNotFound:
                return  # taken offline meanwhile, here or by another process
            log.info("worker_drained", model=worker.model, worker=worker.id)
            return

    def _forget(self, wid: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(wid) is task:
            del self._tasks[wid]
        if not task.cancelled() and task.exception() is not None:
            log.error("worker_drain_failed", worker=wid, error=repr(task.exception()))

    async def close(self) -> None:
        """At shutdown: workers still draining stay registered (and are no longer draining
        after a restart)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
