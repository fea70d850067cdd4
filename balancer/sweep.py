"""One coarse timer for many things: a set of items, looked at every `period` seconds by one task
that runs only while the set is not empty.

A timer per request (a TimerHandle, a task) costs microseconds on every request; the limits and
grace periods swept here are tenths of seconds to minutes, so one sweep serves them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Sweep(Generic[T]):
    def __init__(self, period: float, visit: Callable[[float, Iterable[T]], None]) -> None:
        self.period = period
        self._visit = visit
        """Called with the loop's time and the items (a copy: it may remove some)."""
        self._items: dict[T, None] = {}  # an insertion-ordered set
        self._task: asyncio.Task[None] | None = None

    def add(self, item: T) -> None:
        self._items[item] = None
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, item: T) -> None:
        self._items.pop(item, None)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))

    @property
    def running(self) -> bool:
        return self._task is not None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._items:
                await asyncio.sleep(self.period)
                self._visit(loop.time(), list(self._items))
        finally:
            self._task = None

    async def close(self) -> None:
        """Stop sweeping (at shutdown, when nothing is left to sweep)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
