"""Time limits on one coarse timer behave as asyncio.timeout does, a tick late at most."""

import asyncio

import pytest

from balancer.forwarding.deadlines import Deadlines, _expire

pytestmark = pytest.mark.anyio


async def test_a_limit_that_passes_raises_timeout_error_within_a_tick() -> None:
    deadlines = Deadlines(tick=0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError), deadlines.limit(0.02) as limit:
        await asyncio.sleep(10)
    assert limit.expired
    assert 0.02 <= loop.time() - started < 0.5
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the cancellation was taken back


async def test_a_body_done_in_time_is_left_alone_and_the_sweeper_stops() -> None:
    deadlines = Deadlines(tick=0.01)
    with deadlines.limit(1.0) as limit:
        await asyncio.sleep(0)
    assert not limit.expired
    await asyncio.sleep(0.05)
    assert not deadlines._sweep.running


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    deadlines = Deadlines(tick=0.01)

    async def waits() -> None:
        with deadlines.limit(10):
            await asyncio.sleep(10)

    task = asyncio.ensure_future(waits())
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_each_limit_is_its_own() -> None:
    deadlines = Deadlines(tick=0.01)

    async def sleeps(limit: float, seconds: float) -> str:
        try:
            with deadlines.limit(limit):
                await asyncio.sleep(seconds)
        except TimeoutError:
            return "timed out"
        return "done"

    results = await asyncio.gather(sleeps(0.02, 5), sleeps(5, 0.05), sleeps(0.03, 0.001))
    assert list(results) == ["timed out", "done", "done"]
    await deadlines.close()


async def test_a_cancellation_from_outside_in_the_same_moment_is_not_taken_for_the_limit() -> None:
    deadlines = Deadlines(tick=0.01)

    async def waits() -> None:
        with deadlines.limit(0.02):
            await asyncio.sleep(10)

    task = asyncio.ensure_future(waits())
    await asyncio.sleep(0)
    # The sweep's visit, called here rather than waited for: waiting for it raced with the
    # task, which may run (and leave its limit) before the test looks again.
    limit = next(iter(deadlines._sweep))
    _expire(limit.until, [limit])
    task.cancel()  # a shutdown, say, before the task has run again
    with pytest.raises(asyncio.CancelledError):
        await task
