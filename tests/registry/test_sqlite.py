"""The SQLite store keeps registrations in a real file, in order, across reopenings."""

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from balancer.config import ConfigError
from balancer.errors import WorkerNotFound
from balancer.registry import SchemaTooNew, WorkerRegistry, open_store, parse_spec
from balancer.registry.models import worker_id
from balancer.registry.sqlite import MIGRATIONS, SCHEMA_VERSION, SQLiteStore


def spec(model: str, port: int) -> object:
    return parse_spec(
        {"model_name": model, "api": "openai", "req_url_template": f"http://127.0.0.1:{port}/v1"}
    )


def test_registrations_survive_reopening_the_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/reg.db"

    async def first() -> None:
        registry = WorkerRegistry(open_store(url))
        await registry.store.open()
        for port in (1001, 1002, 1003):
            await registry.register(spec("a", port))  # type: ignore[arg-type]
        await registry.register(spec("a", 1002))  # type: ignore[arg-type]  # idempotent
        await registry.remove("a", "http://127.0.0.1:1003/v1/")
        await registry.store.close()

    async def second() -> list[str]:
        registry = WorkerRegistry(open_store(url))
        await registry.store.open()
        await registry.load()
        await registry.store.close()
        return [w.spec.req_url_template for w in registry]

    asyncio.run(first())
    assert asyncio.run(second()) == ["http://127.0.0.1:1001/v1", "http://127.0.0.1:1002/v1"]
    mode = sqlite3.connect(tmp_path / "reg.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_removing_an_unknown_worker_is_not_found(tmp_path: Path) -> None:
    async def run() -> None:
        registry = WorkerRegistry(open_store("sqlite:///:memory:"))
        await registry.store.open()
        with pytest.raises(WorkerNotFound):
            await registry.remove("a", "http://nowhere/x")
        with pytest.raises(WorkerNotFound):
            await registry.remove("a", "not a url")
        await registry.store.close()

    asyncio.run(run())


@pytest.mark.parametrize("url", ["sqlite:/x.db", "postgres://x", "redis+sentinel://x"])
def test_unsupported_store_urls_are_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        open_store(url)


# The schema before it had a version (user_version 0), as the first released balancer made it.
UNVERSIONED_SCHEMA = """
CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    model_name TEXT NOT NULL,
    spec BLOB NOT NULL,
    updated_at REAL NOT NULL
)
"""


def unversioned_file(path: Path, rows: list[tuple[str, bytes | str]]) -> None:
    """A store file as the balancer wrote it before schema versions, holding (id, spec) rows."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(UNVERSIONED_SCHEMA)
        conn.executemany("INSERT INTO workers VALUES (?, 'm', ?, 0)", rows)
    conn.close()


def stored(path: Path) -> tuple[int, list[tuple[str, bytes | str]]]:
    """The file's schema version and its rows, read with sqlite3 alone."""
    conn = sqlite3.connect(path)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    rows = conn.execute("SELECT id, spec FROM workers ORDER BY rowid").fetchall()
    conn.close()
    return version, rows


def row(port: int, **fields: Any) -> tuple[str, bytes]:
    data = {"model_name": "m", "api": "openai", "req_url_template": f"http://h:{port}/v1"}
    data.update(fields)
    return worker_id("m", f"http://h:{port}/v1"), orjson.dumps(data)


def test_a_file_from_before_schema_versions_is_migrated_in_place(tmp_path: Path) -> None:
    """Its rows keep their order as the order of registrations; new ones come after."""
    path = tmp_path / "old.db"
    unversioned_file(path, [row(1), row(2)])

    async def run() -> list[tuple[str, int]]:
        store = SQLiteStore(str(path))
        await store.open()
        loaded = [(s.spec.worker_id, s.seq) for s in await store.load()]
        for port in (3, 1):
            wid, data = row(port)
            await store.upsert(wid, parse_spec(orjson.loads(data)))
        loaded += [(s.spec.worker_id, s.seq) for s in await store.load()]
        await store.close()
        return loaded

    [one, two, three] = [row(port)[0] for port in (1, 2, 3)]
    assert asyncio.run(run()) == [(one, 1), (two, 2), (one, 4), (two, 2), (three, 3)]
    version, rows = stored(path)
    assert version == SCHEMA_VERSION == len(MIGRATIONS)
    assert [wid for wid, _ in rows] == [one, two, three]


def test_rows_this_version_cannot_read_are_skipped_with_one_warning_each_and_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mixed.db"
    unreadable: list[tuple[str, bytes | str]] = [
        row(2, priority=3),  # a field from a newer version
        row(3, req_type="PUT"),  # a value a newer version allows
        (row(4)[0], "{not json"),
        (row(5)[0], row(6)[1]),  # its id is not its (model, URL)'s
    ]
    unversioned_file(path, [row(1), *unreadable])

    async def run() -> list[str]:
        store = SQLiteStore(str(path))
        await store.open()
        loaded = await store.load()
        await store.load()  # every refresh reads every row: warned once all the same
        await store.close()
        return [s.spec.req_url_template for s in loaded]

    with structlog.testing.capture_logs() as logs:
        assert asyncio.run(run()) == ["http://h:1/v1"]
    skipped = [e for e in logs if e["event"] == "stored_worker_skipped"]
    assert [e["worker"] for e in skipped] == [wid for wid, _ in unreadable]
    assert {e["log_level"] for e in skipped} == {"warning"}
    assert "priority" in skipped[0]["reason"] and "req_type" in skipped[1]["reason"]
    assert stored(path)[1] == [row(1), *unreadable]


def test_a_file_from_a_newer_version_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    unversioned_file(path, [row(1)])
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = stored(path)

    async def run() -> None:
        store = SQLiteStore(str(path))
        with pytest.raises(SchemaTooNew, match=f"version {SCHEMA_VERSION + 1}"):
            await store.open()
        await store.close()

    asyncio.run(run())
    assert stored(path) == before


def test_processes_opening_a_new_file_together_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "new.db"

    async def run() -> None:
        stores = [SQLiteStore(str(path)) for _ in range(4)]
        await asyncio.gather(*(store.open() for store in stores))
        for port, store in enumerate(stores):
            wid, data = row(port)
            await store.upsert(wid, parse_spec(orjson.loads(data)))
        for store in stores:
            await store.close()

    asyncio.run(run())
    version, rows = stored(path)
    assert (version, len(rows)) == (SCHEMA_VERSION, 4)
