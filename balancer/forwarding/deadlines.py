"""Time limits of attempts, on one coarse timer.

`asyncio.timeout` arms a timer for every attempt; on uvloop that costs about 5 µs, more than the
rest of an attempt's bookkeeping. The limits here are seconds to minutes, so one sweep every
`tick` seconds serves them all: an attempt whose limit has passed is cancelled at the next sweep
(a tick late at most), and its `with` block then raises TimeoutError, as `asyncio.timeout`'s does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType

from balancer.sweep import Sweep

DEFAULT_TICK = 0.05


class Deadlines:
    def __init__(self, tick: float = DEFAULT_TICK) -> None:
        self._sweep = Sweep[Limit](tick, expire)

    def limit(self, seconds: float) -> Limit:
        """`with deadlines.limit(s):` bounds the awaits inside it to `s` seconds, about."""
        return Limit(self._sweep, seconds)

    async def close(self) -> None:
        """Stop the sweep (at shutdown, when no attempt is left)."""
        await self._sweep.close()


def expire(now: float, limits: Iterable[Limit]) -> None:
    """One sweep: the tasks whose limits have passed by `now` are cancelled."""
    for limit in limits:
        if now >= limit.until and not limit.expired:
            limit.expired = True
            limit.task.cancel()


class Limit:
    __slots__ = ("_cancelling", "_sweep", "expired", "seconds", "task", "until")

    def __init__(self, sweep: Sweep[Limit], seconds: float) -> None:
        self._sweep = sweep
        self.seconds = seconds
        self.expired = False

    def __enter__(self) -> Limit:
        task = asyncio.current_task()
        assert task is not None, "a time limit needs a task to cancel"
        self.task = task
        self._cancelling = task.cancelling()
        self.until = asyncio.get_running_loop().time() + self.seconds
        self._sweep.add(self)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # No await between the body's end and here: a sweep cannot cancel us after it.
        self._sweep.discard(self)
        # Our cancellation becomes a TimeoutError; one that came from elsewhere in the same
        # moment (a shutdown, a client gone) stays a cancellation, as asyncio.timeout does.
        if (
            self.expired
            and kind is asyncio.CancelledError
            and self.task.uncancel() <= self._cancelling
        ):
            raise TimeoutError from error
