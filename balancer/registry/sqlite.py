"""The SQLite store: one file in WAL mode, used from one thread so the event loop never blocks."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import orjson

from balancer.registry.models import WorkerSpec

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    model_name TEXT NOT NULL,
    spec BLOB NOT NULL,
    updated_at REAL NOT NULL
)
"""


class SQLiteStore:
    def __init__(self, path: str) -> None:
        self.path = path
        # sqlite3 connections are not thread-safe; one thread owns ours and serialises writes.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._conn is None:
                raise sqlite3.ProgrammingError("store is closed")
            return fn(self._conn)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def open(self) -> None:
        def connect() -> None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL survives a killed process (not a power cut); FULL for both.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute(_SCHEMA)
            self._conn = conn

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def load(self) -> list[WorkerSpec]:
        rows = await self._run(
            lambda c: c.execute("SELECT spec FROM workers ORDER BY rowid").fetchall()
        )
        return [WorkerSpec.model_validate(orjson.loads(row[0])) for row in rows]

    async def upsert(self, worker_id: str, spec: WorkerSpec) -> None:
        blob = orjson.dumps(spec.model_dump(exclude_defaults=True))
        await self._run(
            lambda c: c.execute(
                "INSERT INTO workers (id, model_name, spec, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET spec = excluded.spec, "
                "updated_at = excluded.updated_at",
                (worker_id, spec.model_name, blob, time.time()),
            )
        )

    async def delete(self, worker_id: str) -> None:
        await self._run(lambda c: c.execute("DELETE FROM workers WHERE id = ?", (worker_id,)))

    async def version(self) -> int:
        # data_version moves only on commits by *other* connections: our own writes are
        # already in memory.
        row = await self._run(lambda c: c.execute("PRAGMA data_version").fetchone())
        return int(row[0])

    async def ping(self) -> None:
        await self._run(lambda c: c.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)
