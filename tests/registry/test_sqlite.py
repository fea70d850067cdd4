"""The SQLite store keeps registrations in a real file, in order, across reopenings."""

import asyncio
import sqlite3
from pathlib import Path

import pytest

from balancer.config import ConfigError
from balancer.errors import WorkerNotFound
from balancer.registry import WorkerRegistry, open_store, parse_spec


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


@pytest.mark.parametrize("url", ["redis://localhost", "sqlite:/x.db", "postgres://x"])
def test_unsupported_store_urls_are_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        open_store(url)
