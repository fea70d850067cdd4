"""Fixtures for tests in the test's own event loop (anyio, on asyncio), on a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.inprocess import InProcess, in_process


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def lb() -> AsyncIterator[InProcess]:
    """A balancer with default settings, in-process, in front of in-process fake workers."""
    async with in_process() as started:
        yield started
