"""The SQLite store: one file in WAL mode, used from one thread so the event loop never blocks.

The file carries its schema version in `PRAGMA user_version`; opening it applies the migrations
it lacks, in order, in one transaction (docs/store.md).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import orjson

from balancer.config import ConfigError
from balancer.logging import get_logger
from balancer.registry.models import WorkerSpec
from balancer.registry.store import ChangeFeed, RowReader, SchemaTooNew, StoredWorker

T = TypeVar("T")

MIN_SQLITE = (3, 35, 0)
"""For `INSERT ... RETURNING` (Debian 12, Ubuntu 22.04 and Python's own builds have it)."""
log = get_logger("balancer.registry")

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the first schema. Files written before versioning hold exactly this at user_version 0,
    # hence IF NOT EXISTS.
    (
        """CREATE TABLE IF NOT EXISTS workers (
            id TEXT PRIMARY KEY,
            model_name TEXT NOT NULL,
            spec BLOB NOT NULL,
            updated_at REAL NOT NULL
        )""",
    ),
    # 2: `seq` orders registrations (the latest one's strategy and fallbacks win); rows kept so
    # far were registered in rowid order.
    (
        "ALTER TABLE workers ADD COLUMN seq INTEGER NOT NULL DEFAULT 0",
        "UPDATE workers SET seq = rowid",
    ),
)
"""Migration N (1-based) takes a file from user_version N-1 to N. Append, never edit."""

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the file to SCHEMA_VERSION; return the version it had. Safe to race: several
    processes opening one new file migrate it once."""
    # IMMEDIATE takes the write lock before reading the version, so a second process waits and
    # then finds the work done.
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the store's schema is version {found}, written by a newer balancer; this one "
                f"reads up to version {SCHEMA_VERSION}: run the newer balancer, or a copy of the "
                "file made before it"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found


class SQLiteStore:
    def __init__(self, path: str) -> None:
        self.path = path
        # sqlite3 connections are not thread-safe; one thread owns ours and serialises writes.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._conn: sqlite3.Connection | None = None
        # Rows this version cannot read are warned about once (refresh reloads every row).
        self._rows = RowReader()

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._conn is None:
                raise sqlite3.ProgrammingError("store is closed")
            return fn(self._conn)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def open(self) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise ConfigError(
                f"the SQLite store needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer "
                f"(RETURNING); this Python has {sqlite3.sqlite_version}"
            )

        def connect() -> None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                # It holds the workers' keys: readable by its owner only (SQLite gives its -wal
                # and -shm files the same mode).
                os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                conn.execute("PRAGMA busy_timeout=5000")
                _use_wal(conn)
                # In WAL mode NORMAL survives a killed process (not a power cut); FULL for both.
                conn.execute("PRAGMA synchronous=FULL")
                found = migrate(conn)
            except SchemaTooNew as exc:
                conn.close()
                log.error("store_schema_too_new", path=self.path, error=str(exc))
                raise
            except BaseException:
                conn.close()
                raise
            if found != SCHEMA_VERSION:
                log.info("store_migrated", path=self.path, found=found, version=SCHEMA_VERSION)
            self._conn = conn

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def load(self) -> list[StoredWorker]:
        rows = await self._run(
            lambda c: c.execute("SELECT id, spec, seq FROM workers ORDER BY rowid").fetchall()
        )
        return [row for wid, blob, seq in rows if (row := self._rows.read(wid, blob, seq))]

    async def upsert(self, worker_id: str, spec: WorkerSpec) -> int:
        blob = orjson.dumps(spec.model_dump(exclude_defaults=True))
        # One statement: SQLite's write lock makes max(seq) + 1 unique across processes.
        rows = await self._run(
            lambda c: c.execute(
                "INSERT INTO workers (id, model_name, spec, updated_at, seq) "
                "VALUES (?, ?, ?, ?, (SELECT coalesce(max(seq), 0) + 1 FROM workers)) "
                "ON CONFLICT(id) DO UPDATE SET spec = excluded.spec, "
                "updated_at = excluded.updated_at, seq = excluded.seq "
                "RETURNING seq",
                (worker_id, spec.model_name, blob, time.time()),
            ).fetchall()  # to the end: a RETURNING statement holds the write lock until then
        )
        return int(rows[0][0])

    async def delete(self, worker_id: str) -> None:
        await self._run(lambda c: c.execute("DELETE FROM workers WHERE id = ?", (worker_id,)))

    async def version(self) -> int:
        # data_version moves only on commits by *other* connections: our own writes are
        # already in memory.
        row = await self._run(lambda c: c.execute("PRAGMA data_version").fetchone())
        return int(row[0])

    @asynccontextmanager
    async def changes(self, tick: float) -> AsyncIterator[ChangeFeed]:
        # No feed: the file is looked at every tick (`version`), which costs one PRAGMA.
        yield _ticks(tick)

    async def heartbeat(self, replica: str, ttl: float) -> int:
        # Processes sharing a file (`--workers N`) each keep a worker's whole max_concurrency.
        return 1

    async def leave(self, replica: str) -> None:
        return None

    async def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)


async def _ticks(tick: float) -> ChangeFeed:
    while True:
        await asyncio.sleep(tick)
        yield None


def _use_wal(conn: sqlite3.Connection, *, within: float = 5.0) -> None:
    """WAL mode (it stays set in the file). Switching to it takes the file for a moment, and
    SQLite does not wait for that (busy_timeout does not apply): processes opening a new file
    at the same time (`--workers N`) try again until one of them has switched it."""
    deadline = time.monotonic() + within
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
