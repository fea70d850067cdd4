"""Several registries sharing one store file (as `--workers N` processes do) converge on it: a
refresh never undoes a write, an offline reaches a worker another process registered, and the
latest registration's strategy and fallbacks win everywhere."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from balancer.registry import ModelOptions, StoredWorker, WorkerRegistry, WorkerSpec, parse_spec
from balancer.registry.sqlite import SQLiteStore
from balancer.registry.store import ChangeFeed

pytestmark = pytest.mark.anyio


def spec(port: int, **fields: Any) -> WorkerSpec:
    url = f"http://127.0.0.1:{port}/v1"
    return parse_spec({"model_name": "m", "api": "openai", "req_url_template": url, **fields})


def urls(registry: WorkerRegistry) -> list[str]:
    return [worker.spec.req_url_template for worker in registry]


class PausingStore:
    """A SQLite store whose load, once `pause` is set, waits after reading the rows until
    `resume` is set: the moment another write can slip in."""

    def __init__(self, path: Path) -> None:
        self.inner = SQLiteStore(str(path))
        self.pause = False
        self.fail_next_load = False
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()

    async def load(self) -> list[StoredWorker]:
        if self.fail_next_load:
            self.fail_next_load = False
            raise OSError("disk I/O error")
        rows = await self.inner.load()
        if self.pause:
            self.pause = False
            self.paused.set()
            await self.resume.wait()
        return rows

    async def open(self) -> None:
        await self.inner.open()

    async def upsert(self, worker_id: str, spec: WorkerSpec) -> int:
        return await self.inner.upsert(worker_id, spec)

    async def delete(self, worker_id: str) -> None:
        await self.inner.delete(worker_id)

    async def version(self) -> int:
        return await self.inner.version()

    def changes(self, tick: float) -> AbstractAsyncContextManager[ChangeFeed]:
        return self.inner.changes(tick)

    async def heartbeat(self, replica: str, ttl: float) -> int:
        return await self.inner.heartbeat(replica, ttl)

    async def leave(self, replica: str) -> None:
        await self.inner.leave(replica)

    async def close(self) -> None:
        await self.inner.close()


@asynccontextmanager
async def processes(path: Path, count: int) -> AsyncIterator[list[WorkerRegistry]]:
    """`count` registries on the file at `path`, each with its own connection, loaded."""
    registries = [WorkerRegistry(PausingStore(path)) for _ in range(count)]
    for registry in registries:
        await registry.store.open()
        await registry.load()
    try:
        yield registries
    finally:
        for registry in registries:
            await registry.store.close()


async def while_refresh_reads(registry: WorkerRegistry, write: Callable[[], Any]) -> None:
    """Run `write` (a coroutine function) while `registry` refreshes, after it read the rows."""
    store = registry.store
    assert isinstance(store, PausingStore)
    store.pause = True
    refresh = asyncio.ensure_future(registry.refresh())
    await store.paused.wait()
    written = asyncio.ensure_future(write())
    # Give the write every chance to land first (it must wait for the refresh instead): the
    # outcome does not depend on this wait, only how surely a wrong order would show.
    await asyncio.wait({written}, timeout=0.05)
    store.resume.set()
    assert await refresh
    await written


async def test_a_refresh_never_undoes_an_offline_made_while_it_read_the_store(
    tmp_path: Path,
) -> None:
    async with processes(tmp_path / "r.db", 2) as (here, other):
        await here.register(spec(1))
        await other.register(spec(2))  # so `here` has something to catch up with
        await while_refresh_reads(here, lambda: here.remove("m", "http://127.0.0.1:1/v1"))
        assert urls(here) == ["http://127.0.0.1:2/v1"]
        await other.refresh()
        assert urls(other) == ["http://127.0.0.1:2/v1"]


async def test_a_refresh_never_drops_a_registration_made_while_it_read_the_store(
    tmp_path: Path,
) -> None:
    async with processes(tmp_path / "r.db", 2) as (here, other):
        await other.register(spec(2))
        await while_refresh_reads(here, lambda: here.register(spec(1)))
        assert sorted(urls(here)) == ["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"]
        await here.remove("m", "http://127.0.0.1:1/v1")  # known here: no 404


async def test_an_offline_reaches_a_worker_registered_through_another_process_a_moment_ago(
    tmp_path: Path,
) -> None:
    async with processes(tmp_path / "r.db", 2) as (here, other):
        await other.register(spec(1))
        removed = await here.remove("m", "http://127.0.0.1:1/v1")  # before any refresh
        assert removed.removed
        assert urls(here) == []
        assert await other.refresh()
        assert urls(other) == []


FIRST = ModelOptions("round_robin", ("fa",))
SECOND = ModelOptions("random", ("fb",))


async def test_a_refresh_that_failed_to_read_the_store_is_made_again(tmp_path: Path) -> None:
    async with processes(tmp_path / "r.db", 2) as (here, other):
        await other.register(spec(1))
        store = here.store
        assert isinstance(store, PausingStore)
        store.fail_next_load = True
        with pytest.raises(OSError):
            await here.refresh()
        assert await here.refresh()
        assert urls(here) == ["http://127.0.0.1:1/v1"]


async def test_the_latest_registration_wins_in_every_process(tmp_path: Path) -> None:
    async with processes(tmp_path / "r.db", 2) as (a, b):
        await a.register(spec(1, strategy="round_robin", fallbacks=["fa"]))
        await b.register(spec(2, strategy="random", fallbacks=["fb"]))
        await a.refresh()
        await b.refresh()  # learns the older registration last
        assert (a.options("m"), b.options("m")) == (SECOND, SECOND)

        await a.register(spec(1, strategy="round_robin", fallbacks=["fa"]))  # the same, again
        await b.refresh()
        assert (a.options("m"), b.options("m")) == (FIRST, FIRST)


async def test_the_latest_registration_wins_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    async with processes(path, 1) as (registry,):
        await registry.register(spec(1, strategy="round_robin", fallbacks=["fa"]))
        await registry.register(spec(2, strategy="random", fallbacks=["fb"]))
        await registry.register(spec(1, strategy="round_robin", fallbacks=["fa"]))
        assert registry.options("m") == FIRST
    async with processes(path, 1) as (restarted,):
        assert restarted.options("m") == FIRST
        # Its registration gone, the latest one still registered wins.
        await restarted.remove("m", "http://127.0.0.1:1/v1")
        assert restarted.options("m") == SECOND


async def test_a_registration_that_sets_neither_keeps_the_models_options(tmp_path: Path) -> None:
    async with processes(tmp_path / "r.db", 1) as (registry,):
        await registry.register(spec(1, strategy="weighted"))
        await registry.register(spec(2, fallbacks=["fb"]))
        await registry.register(spec(3))
        assert registry.options("m") == ModelOptions("weighted", ("fb",))
