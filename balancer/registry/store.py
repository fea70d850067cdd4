"""Where registrations are kept: a small interface, so SQLite and Redis interchange."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

import orjson
from pydantic import ValidationError

from balancer.config import ConfigError
from balancer.logging import get_logger
from balancer.registry.models import WorkerSpec

log = get_logger("balancer.registry")


@dataclass(frozen=True, slots=True)
class StoredWorker:
    """A registration as the store keeps it."""

    spec: WorkerSpec
    seq: int
    """When it was last registered, as a number that grows with every registration made by any
    process sharing the store: the latest registration's strategy and fallbacks win."""


@dataclass(frozen=True, slots=True)
class StoreChange:
    """One write to the store, as its change feed tells every process sharing it."""

    version: int
    """The store's version once this write was made: one more than before it, so a process
    that sees a number jump knows it missed a change."""
    worker_id: str
    stored: StoredWorker | None
    """The registration now kept under `worker_id`; None when it was removed (or is one this
    version cannot read)."""


ChangeFeed = AsyncIterator[StoreChange | None]
"""Changes in the order they were made, and None every `tick` seconds without one."""


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

    def changes(self, tick: float) -> AbstractAsyncContextManager[ChangeFeed]:
        """The store's change feed, from now on, while the context is open. A store without
        one (SQLite) only ticks: its followers compare `version` instead. Raises when the
        store cannot be reached (entering, or while iterating)."""
        ...

    async def heartbeat(self, replica: str, ttl: float) -> int:
        """Announce `replica` alive for `ttl` seconds; return how many replicas sharing the
        store are alive, this one included."""
        ...

    async def leave(self, replica: str) -> None:
        """`replica` stops: the others stop counting it at once."""
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
    if url.startswith(("redis://", "rediss://")):
        from balancer.registry.redis import RedisStore

        return RedisStore(url)
    raise ConfigError(
        f"store {url!r} is not supported; use sqlite:///./balancer.db or redis://host:6379/0"
    )


class RowReader:
    """Turns stored rows into registrations, skipping (with one warning per row and version of
    it) those this version cannot read: a newer balancer's field or rule, broken JSON, an id
    that is not its model's and URL's."""

    def __init__(self) -> None:
        self._skipped: dict[str, bytes | str] = {}

    def read(self, wid: str, blob: bytes | str, seq: int) -> StoredWorker | None:
        try:
            spec = WorkerSpec.model_validate(orjson.loads(blob))
            if spec.worker_id != wid:
                raise ValueError(f"its model and URL make the id {spec.worker_id}")
        # Not JSON (orjson), a registration this version refuses (pydantic), a wrong id.
        except ValueError as exc:
            self._skip(wid, blob, exc)
            return None
        return StoredWorker(spec, seq)

    def _skip(self, wid: str, blob: bytes | str, exc: Exception) -> None:
        if self._skipped.get(wid) == blob:
            return
        self._skipped[wid] = blob
        if isinstance(exc, ValidationError):
            reason = "; ".join(
                f"{'.'.join(map(str, error['loc'])) or 'row'}: {error['msg']}"
                for error in exc.errors(include_url=False)
            )
        else:
            reason = str(exc)
        log.warning(
            "stored_worker_skipped",
            worker=wid,
            reason=reason,
            hint="this version cannot read the row; it stays in the store untouched",
        )
