"""Where registrations are kept: a small interface, so SQLite and (later) Redis interchange."""

from __future__ import annotations

from typing import Protocol

from balancer.config import ConfigError
from balancer.registry.models import WorkerSpec


class Store(Protocol):
    """Durable registrations. Every write is durable when the awaitable returns."""

    async def open(self) -> None: ...

    async def load(self) -> list[WorkerSpec]:
        """Every stored registration, in registration order."""
        ...

    async def upsert(self, worker_id: str, spec: WorkerSpec) -> None: ...

    async def delete(self, worker_id: str) -> None: ...

    async def version(self) -> int:
        """A number that changes when another process (or connection) changed the store."""
        ...

    async def ping(self) -> None:
        """Raise if the store cannot be reached."""
        ...

    async def close(self) -> None: ...


def open_store(url: str) -> Store:
    """A store from its URL (`BALANCER_STORE`)."""
    if url.startswith("sqlite://"):
        from balancer.registry.sqlite import SQLiteStore

        path = url.removeprefix("sqlite://")
        if not path.startswith("/") or path == "/":
            raise ConfigError(
                f"store {url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        return SQLiteStore(path[1:] or ":memory:")
    raise ConfigError(f"store {url!r} is not supported; use sqlite:///./balancer.db")
