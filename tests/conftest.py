"""Fixtures for tests in the test's own event loop (anyio, on asyncio), on a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest
import redis

from balancer.fakes.processes import RedisProcess
from tests.inprocess import InProcess, in_process

if TYPE_CHECKING:
    import openai


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


@pytest.fixture
def sdk(lb: InProcess) -> openai.AsyncOpenAI:
    """The openai SDK, calling `lb`'s /v1."""
    return lb.sdk()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A real redis-server (Debian's, installed by `scripts/install --system`) on a free
    loopback port, stopped by PID."""
    with RedisProcess(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    """The shared server, emptied for this test."""
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    client.close()
    return redis_server.url
