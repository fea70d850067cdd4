"""Noticing a client that leaves before its answer is over, to stop working for it.

uvicorn does not cancel a request whose client is gone: only `receive()` says so, with an
`http.disconnect` message, and only to someone waiting on it. Left alone, a generation goes on on
a GPU for nobody, and a failing one fails over to more workers for nobody. Waiting on `receive()`
costs a task per request, and most requests are answered within milliseconds; so a request gets
its listener only once it has run `grace` seconds, from one sweep for all of them. When its
client leaves, its task is cancelled: a generation not yet answered, or a stream being relayed,
stops and gives its worker's slot back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from starlette.types import Message, Receive

from balancer.sweep import Sweep

DEFAULT_GRACE = 0.1


class Disconnects:
    def __init__(self, grace: float = DEFAULT_GRACE) -> None:
        self.grace = grace
        self._sweep = Sweep[Watch](grace, self._listen_to_the_due)

    def watch(self, receive: Receive) -> Watch:
        """Watch the current task's client; call `done()` when the request is over."""
        watch = Watch(self._sweep, receive)
        self._sweep.add(watch)
        return watch

    def _listen_to_the_due(self, now: float, watches: Iterable[Watch]) -> None:
        due = now - self.grace
        loop = asyncio.get_running_loop()
        for watch in watches:
            if watch.listener is None and watch.body_read and watch.since <= due:
                watch.listener = loop.create_task(watch.listen())

    async def close(self) -> None:
        await self._sweep.close()


class Watch:
    __slots__ = (
        "_receive",
        "_sweep",
        "body_read",
        "gone",
        "listener",
        "since",
        "task",
    )

    def __init__(self, sweep: Sweep[Watch], receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sweep = sweep
        self._receive = receive
        self.task = task
        self.since = asyncio.get_running_loop().time()
        self.body_read = False
        """Only then may the listener call `receive()`: before, it would take the body."""
        self.gone = False
        self.listener: asyncio.Task[None] | None = None

    async def receive(self) -> Message:
        """The request's `receive`, noting when the whole body has been read."""
        message = await self._receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            self.body_read = True
        return message

    async def listen(self) -> None:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.gone = True
            self.task.cancel()

    def done(self) -> None:
        self._sweep.discard(self)
        if self.listener is not None:
            self.listener.cancel()
