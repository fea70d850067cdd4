"""Where registrations are kept: a small interface, so SQLite and (later) Redis interchange."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from balancer.config import ConfigError
from balancer.registry.models import WorkerSpec


@dataclass(frozen=True, slots=True)
class StoredWorker:
    """A registration as the store keeps it."""

    spec: WorkerSpec
    seq: int
    """When it was last registered, as a number that grows with every registration made by any
    process sharing the store: the latest registration's strategy and fallbacks win."""


class SchemaTooNew(ConfigError):
    """The store was written by a newer balancer, in a schema this one does not know."""


class Store(Protocol):
    """Durable registrations. Every write is durable when the awaitable returns."""

    async def open(self) -> None:
        """Connect, and migrate the schema to this version's (raise SchemaTooNew if newer)."""
        ...

    async def load(self) -> list[StoredWorker]:
        """Every stored registration this version can read, in the order of first registration.

        A row it cannot read (a field or value of a newer version) is skipped with a warning and
        left as it is."""
        ...

    async def upsert(self, worker_id: str, spec: WorkerSpec) -> int:
        """Add or replace a registration; return its new `seq`."""
        ...

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
