"""The Redis store: one hash per worker, a sorted set listing them, a version counter, and a
channel on which every write is published, so that replicas sharing the store follow each other
in well under a second (docs/store.md).

Each write is one Lua script: the hash, the list, the counter and the message change together
or not at all, and the message goes out in the order of the writes. The listing is a script
too, so no reader sees half a worker.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

from balancer.logging import get_logger
from balancer.registry.models import WorkerSpec
from balancer.registry.store import ChangeFeed, RowReader, SchemaTooNew, StoreChange, StoredWorker

log = get_logger("balancer.registry")

PREFIX = "{llm-balancer}:"
"""Every key's; the braces keep them in one hash slot (the scripts touch several at once)."""
WORKERS = PREFIX + "workers"
"""Sorted set: worker ids, scored by the version of their first registration."""
WORKER = PREFIX + "worker:"
"""+ id: hash with `spec` (the registration as JSON), `seq`, `model_name`, `updated_at`."""
VERSION = PREFIX + "version"
"""Counter: one more with every write."""
SCHEMA = PREFIX + "schema"
REPLICAS = PREFIX + "replicas"
"""Sorted set: replica ids, scored by when their heartbeat expires (ms, the server's clock)."""
CHANNEL = "llm-balancer:changes"

MIGRATIONS: tuple[str, ...] = (
    # 1: the layout above.
    "",
)
"""Migration N (1-based) is a Lua script taking the keys from schema N-1 to N. Append only."""
SCHEMA_VERSION = len(MIGRATIONS)

CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 3.0
"""An admin write to a Redis that has gone answers 503 within these, not after a long wait."""

_UPSERT = """
local version = redis.call('INCR', KEYS[2])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
    redis.call('ZADD', KEYS[1], version, ARGV[1])
end
redis.call('HSET', KEYS[3], 'spec', ARGV[2], 'seq', version, 'model_name', ARGV[3],
           'updated_at', ARGV[4])
redis.call('PUBLISH', ARGV[5], '{"version":' .. version .. ',"id":"' .. ARGV[1] ..
           '","seq":' .. version .. ',"spec":' .. ARGV[2] .. '}')
return version
"""

_DELETE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
    return 0
end
redis.call('DEL', KEYS[3])
local version = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[2], '{"version":' .. version .. ',"id":"' .. ARGV[1] .. '"}')
return version
"""

_LOAD = """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local row = redis.call('HMGET', ARGV[1] .. id, 'spec', 'seq')
    table.insert(out, id)
    table.insert(out, row[1])
    table.insert(out, row[2])
end
return out
"""

_HEARTBEAT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
return redis.call('ZCARD', KEYS[1])
"""


class RedisStore:
    def __init__(self, url: str) -> None:
        self.url = url
        # Commands: one retry (after a Redis restart the pooled connections are dead), then the
        # error. The scripts are safe to run twice: a write is keyed by the worker's id.
        self._client: aioredis.Redis = aioredis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
        )
        self._upsert = self._client.register_script(_UPSERT)
        self._delete = self._client.register_script(_DELETE)
        self._load = self._client.register_script(_LOAD)
        self._heartbeat = self._client.register_script(_HEARTBEAT)
        self._rows = RowReader()

    async def open(self) -> None:
        await self._client.set(SCHEMA, 0, nx=True)
        found = int(await self._client.get(SCHEMA) or 0)
        if found > SCHEMA_VERSION:
            error = (
                f"the store's schema is version {found}, written by a newer balancer; this one "
                f"reads up to version {SCHEMA_VERSION}: run the newer balancer"
            )
            log.error("store_schema_too_new", store=self.url, error=error)
            raise SchemaTooNew(error)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            if MIGRATIONS[version - 1]:
                await self._client.eval(MIGRATIONS[version - 1], 0)
            # Only forwards: replicas migrating together each move it once.
            await self._client.eval(
                "if tonumber(redis.call('GET', KEYS[1]) or 0) < tonumber(ARGV[1]) then "
                "redis.call('SET', KEYS[1], ARGV[1]) end",
                1,
                SCHEMA,
                version,
            )
        if found != SCHEMA_VERSION:
            log.info("store_migrated", store=self.url, found=found, version=SCHEMA_VERSION)

    async def load(self) -> list[StoredWorker]:
        # One script: every registration as it was at one moment.
        reply: list[Any] = await self._load(keys=[WORKERS], args=[WORKER])
        loaded = []
        for i in range(0, len(reply), 3):
            wid, blob, seq = reply[i].decode(), reply[i + 1], reply[i + 2]
            if blob is None:
                continue
            row = self._rows.read(wid, blob, int(seq or 0))
            if row is not None:
                loaded.append(row)
        return loaded

    async def upsert(self, worker_id: str, spec: WorkerSpec) -> int:
        blob = orjson.dumps(spec.model_dump(exclude_defaults=True))
        keys = [WORKERS, VERSION, WORKER + worker_id]
        args: list[bytes | str | float] = [worker_id, blob, spec.model_name, time.time(), CHANNEL]
        return int(await self._upsert(keys=keys, args=args))

    async def delete(self, worker_id: str) -> None:
        keys = [WORKERS, VERSION, WORKER + worker_id]
        await self._delete(keys=keys, args=[worker_id, CHANNEL])

    async def version(self) -> int:
        return int(await self._client.get(VERSION) or 0)

    @asynccontextmanager
    async def changes(self, tick: float) -> AsyncIterator[ChangeFeed]:
        # A connection of its own, which never reconnects by itself: a reconnection must be
        # seen, since messages published meanwhile are lost (the follower then reads it all).
        subscriber: aioredis.Redis = aioredis.from_url(
            self.url, socket_connect_timeout=CONNECT_TIMEOUT, retry=Retry(NoBackoff(), 0)
        )
        pubsub = subscriber.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(CHANNEL)
            yield self._feed(pubsub, tick)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await subscriber.aclose()

    async def _feed(self, pubsub: PubSub, tick: float) -> ChangeFeed:
        while True:
            message = await pubsub.get_message(timeout=tick)
            if message is None:
                yield None
            elif message["type"] == "message":
                yield self._change(message["data"])

    def _change(self, data: bytes) -> StoreChange:
        message = orjson.loads(data)
        wid = str(message["id"])
        stored = None
        if "spec" in message:
            stored = self._rows.read(wid, orjson.dumps(message["spec"]), int(message["seq"]))
        return StoreChange(int(message["version"]), wid, stored)

    async def heartbeat(self, replica: str, ttl: float) -> int:
        return int(await self._heartbeat(keys=[REPLICAS], args=[replica, int(ttl * 1000)]))

    async def leave(self, replica: str) -> None:
        await self._client.zrem(REPLICAS, replica)

    async def close(self) -> None:
        await self._client.aclose()
