"""Time limits of attempts, on one coarse timer.

`asyncio.timeout` arms a timer for every attempt; on uvloop that costs about 5 µs, more than the
rest of an attempt's bookkeeping. The limits here are seconds to minutes, so one sweep every
`tick` seconds serves them all: an attempt whose limit has passed is cancelled at the next sweep
(a tick late at most), and its `with` block then raises TimeoutError, as `asyncio.timeout`'s does.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

DEFAULT_TICK = 0.05


class Deadlines:
    def __init__(self, tick: float = DEFAULT_TICK) -> None:
        self.tick = tick
        self._watched: dict[Limit, None] = {}  # insertion-ordered set
        self._sweeper: asyncio.Task[None] | None = None

    def limit(self, seconds: float) -> Limit:
        """`with deadlines.limit(s):` bounds the awaits inside it to `s` seconds, about."""
        return Limit(self, seconds)

    def _watch(self, limit: Limit) -> None:
        self._watched[limit] = None
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._watched:
                await asyncio.sleep(self.tick)
                now = loop.time()
                for limit in list(self._watched):
                    if now >= limit.until and not limit.expired:
                        limit.expired = True
                        limit.task.cancel()
        finally:
            self._sweeper = None

    async def close(self) -> None:
        """Stop the sweeper (at shutdown, when no attempt is left)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)


class Limit:
    __slots__ = ("_cancelling", "_owner", "expired", "seconds", "task", "until")

    def __init__(self, owner: Deadlines, seconds: float) -> None:
        self._owner = owner
        self.seconds = seconds
        self.expired = False

    def __enter__(self) -> Limit:
        task = asyncio.current_task()
        assert task is not None, "a time limit needs a task to cancel"
        self.task = task
        self._cancelling = task.cancelling()
        self.until = asyncio.get_running_loop().time() + self.seconds
        self._owner._watch(self)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # No await between the body's end and here: a sweep cannot cancel us after it.
        del self._owner._watched[self]
        # Our cancellation becomes a TimeoutError; one that came from elsewhere in the same
        # moment (a shutdown, a client gone) stays a cancellation, as asyncio.timeout does.
        if (
            self.expired
            and kind is asyncio.CancelledError
            and self.task.uncancel() <= self._cancelling
        ):
            raise TimeoutError from error
