"""The Redis store, on a real redis-server: registrations kept atomically and in order, every
change published and followed by other registries, a missed change repaired by a full read,
schemas of newer balancers refused, replicas counted by heartbeat."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import structlog

from balancer.errors import StoreUnavailable
from balancer.fakes.processes import RedisProcess
from balancer.logging import redact_text, redact_url
from balancer.registry import SchemaTooNew, WorkerRegistry, WorkerSpec, open_store, parse_spec
from balancer.registry.follow import StoreAvailability, StoreFollower
from balancer.registry.models import worker_id
from balancer.registry.redis import SCHEMA, VERSION, WORKER, WORKERS, RedisStore
from balancer.registry.store import StoreChange, StoredWorker
from balancer.signals import Signal
from tests.inprocess import eventually

pytestmark = pytest.mark.anyio


def spec(port: int, model: str = "m", **fields: Any) -> WorkerSpec:
    url = f"http://127.0.0.1:{port}/v1"
    return parse_spec({"model_name": model, "api": "openai", "req_url_template": url, **fields})


def urls(registry: WorkerRegistry) -> list[str]:
    return [worker.spec.req_url_template for worker in registry]


@asynccontextmanager
async def replicas(url: str, count: int) -> AsyncIterator[list[tuple[WorkerRegistry, Any]]]:
    """`count` registries on the Redis at `url`, loaded, each followed by a StoreFollower."""
    started = []
    tasks = []
    for _ in range(count):
        registry = WorkerRegistry(open_store(url))
        await registry.store.open()
        await registry.load()
        follower = StoreFollower(registry, tick=0.05)
        tasks.append(asyncio.ensure_future(follower.run()))
        started.append((registry, follower))
    await asyncio.sleep(0.1)  # subscribed
    try:
        yield started
    finally:
        for _, follower in started:
            follower.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for registry, _ in started:
            await registry.store.close()


async def test_registrations_are_kept_in_order_of_first_registration(redis_url: str) -> None:
    store = RedisStore(redis_url)
    await store.open()
    try:
        first = await store.upsert(spec(1).worker_id, spec(1))
        await store.upsert(spec(2).worker_id, spec(2))
        again = await store.upsert(spec(1).worker_id, spec(1, weight=3))
        assert again > first
        loaded = await store.load()
        assert [row.spec.req_url_template for row in loaded] == [
            "http://127.0.0.1:1/v1",
            "http://127.0.0.1:2/v1",
        ]
        assert loaded[0].spec.weight == 3 and loaded[0].seq == again
        await store.delete(spec(1).worker_id)
        assert [row.spec.worker_id for row in await store.load()] == [spec(2).worker_id]
    finally:
        await store.close()


async def test_a_change_on_one_replica_reaches_the_others_from_the_channel(
    redis_url: str,
) -> None:
    async with replicas(redis_url, 3) as [(a, _), (b, _), (c, _)]:
        await a.register(spec(1, strategy="round_robin"))
        await eventually(lambda: urls(b) == urls(c) == ["http://127.0.0.1:1/v1"], within=1.0)
        assert c.options("m").strategy == "round_robin"
        await c.remove("m", "http://127.0.0.1:1/v1")
        await eventually(lambda: urls(a) == urls(b) == [], within=1.0)


async def test_the_latest_registration_wins_on_every_replica(redis_url: str) -> None:
    async with replicas(redis_url, 2) as [(a, _), (b, _)]:
        await a.register(spec(1, strategy="round_robin", fallbacks=["fa"]))
        await b.register(spec(2, strategy="random", fallbacks=["fb"]))
        await a.register(spec(1, strategy="round_robin", fallbacks=["fa"]))
        await eventually(lambda: a.options("m") == b.options("m"), within=1.0)
        assert b.options("m").fallbacks == ("fa",)


async def test_a_change_that_skips_a_number_makes_a_full_read(redis_url: str) -> None:
    """A message lost on the way (here: never published) is noticed by the next one."""
    registry = WorkerRegistry(open_store(redis_url))  # followed by hand: no follower races
    await registry.store.open()
    await registry.load()
    seen = await registry.store.version()
    writer = aioredis.from_url(redis_url)
    # Written behind the store's back, as if its message had been lost.
    lost = spec(7)
    await writer.zadd(WORKERS, {lost.worker_id: 100})
    await writer.hset(
        WORKER + lost.worker_id,
        mapping={"spec": orjson.dumps(lost.model_dump(exclude_defaults=True)), "seq": 1},
    )
    await writer.incrby(VERSION, 2)
    await writer.aclose()
    with structlog.testing.capture_logs() as logs:
        assert await registry.apply(StoreChange(seen + 2, "unknown", None))
    assert urls(registry) == ["http://127.0.0.1:7/v1"]
    assert any(line["event"] == "store_changes_missed" for line in logs)
    await registry.store.close()


async def test_a_replicas_own_change_coming_back_from_the_channel_changes_nothing(
    redis_url: str,
) -> None:
    registry = WorkerRegistry(open_store(redis_url))  # followed by hand: no follower races
    await registry.store.open()
    await registry.load()
    heard: list[str] = []
    registry.changed.connect(lambda event: heard.append(event.change))
    worker, _ = await registry.register(spec(1))
    own = StoreChange(worker.seq, worker.id, StoredWorker(spec(1), worker.seq))
    assert not await registry.apply(own)  # in memory already
    assert not await registry.apply(own)  # and seen
    assert heard == ["registered"]
    assert urls(registry) == ["http://127.0.0.1:1/v1"]
    await registry.store.close()


async def test_a_store_of_a_newer_schema_is_refused(redis_url: str) -> None:
    writer = aioredis.from_url(redis_url)
    await writer.set(SCHEMA, 99)
    await writer.aclose()
    store = RedisStore(redis_url)
    with pytest.raises(SchemaTooNew, match="version 99"):
        await store.open()
    await store.close()


async def test_a_registration_this_version_cannot_read_is_skipped_and_kept(
    redis_url: str,
) -> None:
    store = RedisStore(redis_url)
    await store.open()
    good = spec(1)
    await store.upsert(good.worker_id, good)
    newer = {**good.model_dump(exclude_defaults=True), "req_url_template": "http://x:2/v1"}
    newer["priority"] = 3
    wid = worker_id("m", "http://x:2/v1")
    writer = aioredis.from_url(redis_url)
    await writer.zadd(WORKERS, {wid: 50})
    await writer.hset(WORKER + wid, mapping={"spec": orjson.dumps(newer), "seq": 50})
    with structlog.testing.capture_logs() as logs:
        loaded = await store.load()
    assert [row.spec.worker_id for row in loaded] == [good.worker_id]
    assert [line["worker"] for line in logs if line["event"] == "stored_worker_skipped"] == [wid]
    assert orjson.loads(await writer.hget(WORKER + wid, "spec") or b"") == newer
    await writer.aclose()
    await store.close()


async def test_replicas_are_counted_by_heartbeat_until_they_expire_or_leave(
    redis_url: str,
) -> None:
    store = RedisStore(redis_url)
    await store.open()
    try:
        assert await store.heartbeat("a", 10) == 1
        assert await store.heartbeat("b", 10) == 2
        assert await store.heartbeat("c", 0.05) == 3
        await asyncio.sleep(0.1)
        assert await store.heartbeat("a", 10) == 2  # c expired
        await store.leave("b")
        assert await store.heartbeat("a", 10) == 1
    finally:
        await store.close()


async def test_redis_gone_keeps_memory_refuses_writes_then_catches_up(tmp_path: Path) -> None:
    """While Redis is stopped the registry is as last read, writes are StoreUnavailable and the
    follower says the store is down; once it is back the follower reads what others wrote."""
    server = RedisProcess(tmp_path)
    server.start()
    availability = Signal[StoreAvailability]("availability")
    heard: list[bool] = []
    availability.connect(lambda event: heard.append(event.up))
    registry = WorkerRegistry(open_store(server.url))
    await registry.store.open()
    follower = StoreFollower(registry, availability=availability, tick=0.05)
    task = asyncio.ensure_future(follower.run())
    try:
        await registry.register(spec(1))
        server.stop()
        await eventually(lambda: not follower.up, within=2.0)
        assert urls(registry) == ["http://127.0.0.1:1/v1"]
        with pytest.raises(StoreUnavailable, match="not saved"):
            await registry.register(spec(2))
        assert urls(registry) == ["http://127.0.0.1:1/v1"]

        server.start()  # the same port and data
        other = RedisStore(server.url)
        await other.upsert(spec(3).worker_id, spec(3))  # made while this one was away
        await other.close()
        await eventually(lambda: follower.up, within=5.0)
        await eventually(lambda: len(urls(registry)) == 2, within=2.0)
        assert urls(registry) == ["http://127.0.0.1:1/v1", "http://127.0.0.1:3/v1"]
        assert heard == [False, True]
    finally:
        follower.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await registry.store.close()
        server.stop()


def test_the_password_never_reaches_the_logs() -> None:
    assert redact_text("store redis://:s3cret@redis:6379/0: refused") == (
        "store redis://***@redis:6379/0: refused"
    )
    assert redact_url("rediss://user:s3cret@redis/1") == "rediss://***@redis/1"
    assert redact_url("redis://redis:6379/0") == "redis://redis:6379/0"


async def test_a_redis_that_lost_its_data_gets_the_registry_back_from_the_replicas(
    redis_url: str,
) -> None:
    """Restarted without its data (no append-only file): the replicas write back what they
    hold, so no registration is lost, and none is duplicated."""
    async with replicas(redis_url, 2) as [(a, _), (b, _)]:
        await a.register(spec(1))
        await b.register(spec(2, strategy="random"))
        await eventually(lambda: len(urls(a)) == len(urls(b)) == 2, within=1.0)
        writer = aioredis.from_url(redis_url)
        await writer.flushall()
        store = RedisStore(redis_url)
        deadline = asyncio.get_running_loop().time() + 5
        while len(rows := await store.load()) < 2:  # written back at the next version check
            assert asyncio.get_running_loop().time() < deadline, rows
            await asyncio.sleep(0.02)
        assert sorted(row.spec.req_url_template for row in rows) == [
            "http://127.0.0.1:1/v1",
            "http://127.0.0.1:2/v1",
        ]
        assert int(await writer.get(SCHEMA) or 0) == 1
        assert sorted(urls(a)) == sorted(urls(b)) and len(urls(a)) == 2
        assert b.options("m").strategy == "random"
        await store.close()
        await writer.aclose()
