"""Requests waiting for a slot when every worker of their model is at its `max_concurrency`.

Each model has a line of at most `max_waiting` places, first come first served. A freed slot
wakes the first place still waiting, and only it; the woken request chooses a worker again. A
request that arrived just as the slot was freed may have taken it: the woken one then waits
again, keeping its place at the head of the line. A wake-up is never lost: a request that
leaves after it was woken but before it used the slot (its client left, or its time ran out in
that same moment) passes it on to the next in line, and so does a request that cannot use the
freed worker (one it has tried already, or one that does not speak its API).
"""

from __future__ import annotations

import asyncio
from collections import deque

from balancer.config import DEFAULT_MAX_QUEUE
from balancer.registry.models import Worker


class Place:
    """One request's place in its model's line, from `CapacityQueue.join` until `leave`."""

    __slots__ = ("_lines", "_model", "_wake_up")

    def __init__(self, lines: dict[str, deque[Place]], model: str) -> None:
        self._lines = lines
        self._model = model
        self._wake_up: asyncio.Future[Worker] | None = None

    @property
    def waiting(self) -> bool:
        return self._wake_up is not None and not self._wake_up.done()

    async def wait(self, seconds: float) -> Worker | None:
        """Wait up to `seconds` for a slot to be freed for this place: the worker whose slot
        it is, or None if none was."""
        wake_up: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        self._wake_up = wake_up
        try:
            async with asyncio.timeout(seconds):
                return await wake_up
        except TimeoutError:
            # The timer may have fired in the same moment a slot was freed for this place.
            self._pass_on_unused(wake_up)
            return None
        except asyncio.CancelledError:
            # The client left (or the server stops); a wake-up that came goes to the next.
            self._pass_on_unused(wake_up)
            raise

    def pass_on(self, freed: Worker) -> None:
        """The slot freed for this place is one it cannot use: wake the next place waiting
        behind it (never one ahead: that one could not use it either, or is served)."""
        behind = False
        for place in self._lines[self._model]:
            if behind and place.waiting:
                place._wake(freed)
                return
            behind = behind or place is self

    def leave(self) -> None:
        """Out of the line, served or not."""
        line = self._lines[self._model]
        line.remove(self)
        if not line:
            del self._lines[self._model]

    def _wake(self, freed: Worker) -> None:
        assert self._wake_up is not None
        self._wake_up.set_result(freed)

    def _pass_on_unused(self, wake_up: asyncio.Future[Worker]) -> None:
        if wake_up.done() and not wake_up.cancelled():
            self.pass_on(wake_up.result())


class CapacityQueue:
    def __init__(self, max_waiting: int = DEFAULT_MAX_QUEUE) -> None:
        self.max_waiting = max_waiting
        # Only models with waiters have a line, so releasing a slot costs a dictionary miss
        # when nobody waits.
        self._lines: dict[str, deque[Place]] = {}

    def join(self, model: str) -> Place | None:
        """A place at the end of the model's line; None when the line is full."""
        line = self._lines.get(model)
        if line is None:
            if self.max_waiting <= 0:
                return None
            line = self._lines[model] = deque()
        elif len(line) >= self.max_waiting:
            return None
        place = Place(self._lines, model)
        line.append(place)
        return place

    def released(self, worker: Worker) -> None:
        """A slot of the worker's model is free: wake the first place still waiting."""
        line = self._lines.get(worker.model)
        if line:
            for place in line:
                if place.waiting:
                    place._wake(worker)
                    return

    def grown(self, worker: Worker) -> None:
        """The model may have more slots now (a worker registered, or its max_concurrency
        raised): wake every place waiting; each chooses again, and those that find nothing keep
        their place."""
        line = self._lines.get(worker.model)
        if line:
            for place in line:
                if place.waiting:
                    place._wake(worker)
