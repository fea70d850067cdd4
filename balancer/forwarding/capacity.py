"""Requests waiting for a slot when every worker of their model is at its `max_concurrency`."""

from __future__ import annotations

import asyncio

from balancer.registry.models import Worker


class CapacityQueue:
    def __init__(self) -> None:
        # Set (and replaced) when a slot of the model frees up; only models with waiters have
        # one, so releasing a slot costs a dictionary miss when nobody waits.
        self._freed: dict[str, asyncio.Event] = {}

    async def wait(self, model: str, seconds: float) -> bool:
        """Wait up to `seconds` for a slot of the model to free up; False if none did."""
        event = self._freed.get(model)
        if event is None:
            event = self._freed[model] = asyncio.Event()
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def released(self, worker: Worker) -> None:
        """A slot of the worker's model is free: wake every waiter, they choose again."""
        event = self._freed.pop(worker.model, None)
        if event is not None:
            event.set()
