"""The registry's index: workers by model, in memory for the hot path, written through to the
store. Every change is sent as `registry_changed`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from balancer.errors import StoreUnavailable, WorkerNotFound
from balancer.logging import get_logger
from balancer.registry.models import Worker, WorkerSpec, normalise_url, worker_id
from balancer.registry.store import Store, StoreChange, StoredWorker
from balancer.signals import Signal
from balancer.types import Clock, Strategy
from probes.health import HealthPolicy, WorkerHealth

log = get_logger("balancer.registry")


@dataclass(frozen=True, slots=True)
class ModelOptions:
    """What the workers of one model share; of its registered workers, the latest registration
    that sets a field wins."""

    strategy: Strategy | None = None
    fallbacks: tuple[str, ...] = ()


_NO_OPTIONS = ModelOptions()

Change = Literal["registered", "updated", "removed"]


@dataclass(frozen=True, slots=True)
class RegistryChanged:
    """A worker was registered, updated or removed (here, or by another process sharing the
    store)."""

    change: Change
    worker: Worker
    model_gone: bool = False
    """The worker was its model's last: whatever is kept per model can go too."""


class WorkerRegistry:
    def __init__(
        self,
        store: Store,
        *,
        changed: Signal[RegistryChanged] | None = None,
        health_policy: HealthPolicy | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.store = store
        self.changed = changed if changed is not None else Signal[RegistryChanged]("changed")
        self.health_policy = health_policy or HealthPolicy()
        self.clock = clock
        self._by_model: dict[str, list[Worker]] = {}
        self._by_id: dict[str, Worker] = {}
        # Writes are serialised so the store and memory always agree on the order of changes.
        self._write_lock = asyncio.Lock()
        self._options: dict[str, ModelOptions] = {}
        self._seen_version: int | None = None
        self.replicas = 1
        """Live balancer replicas sharing the store: each keeps its share of a worker's
        max_concurrency."""

    async def load(self) -> int:
        """Fill memory from the store at start-up."""
        async with self._write_lock:
            await self._catch_up()
        return len(self._by_id)

    async def register(self, spec: WorkerSpec) -> tuple[Worker, bool]:
        """Add or update the worker of (model, normalised URL); return it and whether it is new."""
        async with self._write_lock:
            try:
                seq = await self.store.upsert(spec.worker_id, spec)
            except Exception as exc:
                log.error("store_write_failed", error=repr(exc), model=spec.model_name)
                raise StoreUnavailable(
                    "the store cannot be reached, so the registration was not saved and the "
                    "registry is unchanged; try again when it is back (GET /readyz says)",
                    model=spec.model_name,
                ) from exc
            return self._put(spec, seq)

    async def find(self, model_name: str, url: str) -> Worker | None:
        """The worker of (model, URL), or None; store errors are raised."""
        async with self._write_lock:
            return await self._find(model_name, url)

    async def _find(self, model_name: str, url: str) -> Worker | None:
        try:
            wid = worker_id(model_name, url)
        except ValueError:
            return None
        if wid not in self._by_id:
            # Registered a moment ago through another process sharing the store?
            await self._catch_up()
        return self._by_id.get(wid)

    async def remove(self, model_name: str, url: str) -> Worker:
        """Take a worker offline. Requests already using it finish normally."""
        async with self._write_lock:
            try:
                worker = await self._find(model_name, url)
            except Exception as exc:
                log.error("store_read_failed", error=repr(exc), model=model_name)
                raise StoreUnavailable(
                    "the store cannot be reached, so the worker is still registered; try "
                    "again when it is back (GET /readyz says)",
                    model=model_name,
                ) from exc
            if worker is None:
                raise WorkerNotFound()
            try:
                await self.store.delete(worker.id)
            except Exception as exc:
                log.error("store_write_failed", error=repr(exc), model=model_name)
                raise StoreUnavailable(
                    "the store cannot be reached, so the removal was not saved and the worker is "
                    "still registered; try again when it is back (GET /readyz says)",
                    model=model_name,
                ) from exc
            self._drop(worker)
            return worker

    async def refresh(self, *, full: bool = False) -> bool:
        """Catch up with changes other processes made to the store; True if there were any.
        `full`: read it all even if its version did not move (a reconnection, or now and then
        in case a change was missed).

        Several balancer processes (`--workers N`, replicas sharing one Redis, or balancers
        sharing one SQLite file) each keep the registry in memory; the store is the truth they
        converge on.
        """
        async with self._write_lock:
            return await self._catch_up(full=full)

    async def apply(self, change: StoreChange) -> bool:
        """Follow one change from the store's feed (made here or by another replica); True if
        memory changed. Changes come in the order they were made, numbered: one that skips a
        number means some were missed, and the whole store is read instead."""
        async with self._write_lock:
            seen = self._seen_version
            if seen is None or change.version <= seen:
                return False  # already in the snapshot memory was made from
            if change.version != seen + 1:
                log.warning("store_changes_missed", seen=seen, got=change.version)
                return await self._catch_up(full=True)
            self._seen_version = change.version
            existing = self._by_id.get(change.worker_id)
            if change.stored is None:
                if existing is None:
                    return False
                self._drop(existing)
                return True
            if existing is not None and existing.seq > change.stored.seq:
                return False  # our own later registration is in memory (its message follows)
            return self._keep(existing, change.stored)

    def _keep(self, existing: Worker | None, row: StoredWorker) -> bool:
        """Memory holds `row`; True if it changed."""
        if existing is None or existing.spec != row.spec:
            self._put(row.spec, row.seq)
            return True
        if existing.seq != row.seq:
            # Registered again, unchanged, elsewhere: only the order of registrations moved.
            existing.seq = row.seq
            self._settle_options(existing.model)
            return True
        return False

    async def _catch_up(self, *, full: bool = False) -> bool:
        """Make memory what the store holds, if another process changed it. Called under the
        write lock: a snapshot read before one of our own writes would undo that write."""
        version = await self.store.version()
        if version == self._seen_version and not full:
            return False
        if self._seen_version is not None and version < self._seen_version:
            await self._restore(version)
            return await self._catch_up(full=True)
        # Read before the snapshot (a commit in between moves it again, and the next call
        # reloads), and taken as seen only once the snapshot is in: a load that fails is tried
        # again by the next call.
        stored = await self.store.load()
        self._seen_version = version
        wanted = {row.spec.worker_id: row for row in stored}
        gone = [w for wid, w in self._by_id.items() if wid not in wanted]
        for worker in gone:
            self._drop(worker)
        changed = bool(gone)
        for row in stored:
            changed = self._keep(self._by_id.get(row.spec.worker_id), row) or changed
        return changed or not full

    async def _restore(self, version: int) -> None:
        """The store went back in time (a Redis restarted without its data, or from an older
        copy): write back what memory holds, in registration order, so that no registration
        is lost. Every replica that saw it does the same; writes are keyed by worker id, so
        none is duplicated."""
        log.warning(
            "store_lost_writes",
            seen=self._seen_version,
            found=version,
            restoring=len(self._by_id),
            hint="the store holds less than it did; writing back this replica's registry",
        )
        await self.store.open()  # its schema version, if that went too
        for worker in sorted(self._by_id.values(), key=lambda w: w.seq):
            worker.seq = await self.store.upsert(worker.id, worker.spec)
        self._seen_version = None

    def _drop(self, worker: Worker) -> None:
        del self._by_id[worker.id]
        siblings = self._by_model[worker.model]
        siblings.remove(worker)
        if not siblings:
            del self._by_model[worker.model]
        self._settle_options(worker.model)
        worker.removed = True
        self._emit("removed", worker, model_gone=not siblings)

    def _put(self, spec: WorkerSpec, seq: int) -> tuple[Worker, bool]:
        existing = self._by_id.get(spec.worker_id)
        if existing is not None:
            existing.set_spec(spec, self.replicas)
            existing.seq = seq
            self._settle_options(spec.model_name)
            self._emit("updated", existing)
            return existing, False
        worker = Worker(spec, WorkerHealth(self.health_policy, self.clock()), seq=seq)
        worker.share(self.replicas)
        self._by_id[worker.id] = worker
        self._by_model.setdefault(worker.model, []).append(worker)
        self._settle_options(worker.model)
        self._emit("registered", worker)
        return worker, True

    def _settle_options(self, model: str) -> None:
        """The model's options from its registrations, the latest (highest `seq`) last: the same
        in every process and after a restart, whatever order this one learnt them in."""
        strategy: Strategy | None = None
        fallbacks: tuple[str, ...] = ()
        for worker in sorted(self._by_model.get(model, ()), key=lambda w: w.seq):
            if worker.spec.strategy is not None:
                strategy = worker.spec.strategy
            if worker.spec.fallbacks is not None:
                fallbacks = tuple(worker.spec.fallbacks)
        if strategy is None and not fallbacks:
            self._options.pop(model, None)
        else:
            self._options[model] = ModelOptions(strategy, fallbacks)

    def _emit(self, change: Change, worker: Worker, *, model_gone: bool = False) -> None:
        if self.changed:
            self.changed.send(RegistryChanged(change, worker, model_gone))

    def share(self, replicas: int) -> list[Worker]:
        """`replicas` balancers share the store now; return the workers whose share grew."""
        self.replicas = max(replicas, 1)
        return [worker for worker in self._by_id.values() if worker.share(self.replicas)]

    def workers_of(self, model: str) -> list[Worker] | None:
        """The model's workers (the live list: do not modify), or None for an unknown model."""
        return self._by_model.get(model)

    def options(self, model: str) -> ModelOptions:
        return self._options.get(model, _NO_OPTIONS)

    def get(self, wid: str) -> Worker | None:
        return self._by_id.get(wid)

    def models(self) -> list[str]:
        return list(self._by_model)

    def __iter__(self) -> Iterator[Worker]:
        """Every worker, in registration order (the order the store keeps too)."""
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)


__all__ = ["Change", "ModelOptions", "RegistryChanged", "WorkerRegistry", "normalise_url"]
