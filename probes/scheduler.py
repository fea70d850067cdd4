"""One APScheduler job per worker probes it on a timer; jobs follow the registry's changes.

Every call into the scheduler runs in a fresh, empty `contextvars.Context`. APScheduler's asyncio
scheduler wakes itself with `call_soon_threadsafe` and `call_later`, which copy the caller's
context, and each job's task copies the timer's: a worker registered (or ejected) by a request
would otherwise have its probes, and every probe after them, log that request's id.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import ParamSpec, TypeVar

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from balancer.config import DEFAULT_PROBE_INTERVAL, DEFAULT_PROBE_JITTER
from balancer.events import HealthChanged, RegistryChanged
from balancer.logging import get_logger
from balancer.registry import Worker, WorkerRegistry
from probes.checks import Prober
from probes.monitor import HealthMonitor

log = get_logger("probes.scheduler")

PROBE_TICK = 0.1
"""Seconds between the instants probes may start at (at most a tenth of the interval). Probes
that fall due together share one wake-up of the event loop and of the scheduler: a thousand
workers probed every 5 s cost a third of the CPU they cost at scattered instants (`bench/scale.py`:
about 140 instead of 430 us per probe)."""


class TickedIntervalTrigger(IntervalTrigger):  # type: ignore[misc]  # APScheduler 3 is untyped
    """APScheduler's interval trigger, its jitter included, with every fire time rounded up to
    the next multiple of `tick` seconds."""

    def __init__(self, *, seconds: float, jitter: float | None, tick: float) -> None:
        super().__init__(seconds=seconds, jitter=jitter)
        self.tick = tick

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        fire_time: datetime | None = super().get_next_fire_time(previous_fire_time, now)
        return None if fire_time is None else on_tick(fire_time, self.tick)


def on_tick(moment: datetime, tick: float) -> datetime:
    """The first multiple of `tick` seconds (since the epoch) at or after `moment`."""
    # round() first: a moment already on a tick must not move a whole tick for a float's error.
    ticks = math.ceil(round(moment.timestamp() / tick, 6))
    return datetime.fromtimestamp(ticks * tick, tz=moment.tzinfo)


class ProbeScheduler:
    """Probes every worker every `interval` seconds (ejected ones twice as often, as Envoy's
    unhealthy_interval does, so a worker that comes back is back soon)."""

    def __init__(
        self,
        registry: WorkerRegistry,
        prober: Prober,
        monitor: HealthMonitor,
        *,
        interval: float = DEFAULT_PROBE_INTERVAL,
        jitter: float = DEFAULT_PROBE_JITTER,
    ) -> None:
        self.registry = registry
        self.prober = prober
        self.monitor = monitor
        self.interval = interval
        self.jitter = jitter
        self.tick = min(PROBE_TICK, interval / 10)
        self._scheduler = AsyncIOScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        self._in_flight: set[asyncio.Task[None]] = set()
        # APScheduler logs every run at INFO; a thousand workers would drown the real events.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def start(self) -> None:
        _detached(self._scheduler.start)
        for worker in self.registry:
            self._add(worker)

    async def shutdown(self) -> None:
        """Stop probing: no new probes, and the ones under way are cancelled (before the client
        they use is closed, so none of them fails for it)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        probes = list(self._in_flight)
        for task in probes:
            task.cancel()
        await asyncio.gather(*probes, return_exceptions=True)

    def has_job(self, worker_id: str) -> bool:
        return self._scheduler.get_job(worker_id) is not None

    def _interval_for(self, worker: Worker) -> float:
        return self.interval / 2 if worker.status == "ejected" else self.interval

    def _trigger(self, worker: Worker) -> IntervalTrigger:
        interval = self._interval_for(worker)
        return TickedIntervalTrigger(
            seconds=interval, jitter=interval * self.jitter or None, tick=self.tick
        )

    def _add(self, worker: Worker) -> None:
        if not self._scheduler.running:
            return  # start() adds every worker known by then.
        # The first probe comes soon, spread a little so a restart does not probe all at once.
        first = on_tick(
            datetime.now().astimezone()
            + timedelta(seconds=random.uniform(0, min(self.interval, 1.0) * self.jitter)),
            self.tick,
        )
        _detached(
            self._scheduler.add_job,
            self._probe,
            self._trigger(worker),
            args=[worker],
            id=worker.id,
            replace_existing=True,
            next_run_time=first,
        )

    def on_registry_changed(self, event: RegistryChanged) -> None:
        worker = event.worker
        if event.change == "removed":
            self.prober.forget(worker.id)
            if self.has_job(worker.id):
                _detached(self._scheduler.remove_job, worker.id)
        elif event.change == "registered" or not self.has_job(worker.id):
            self._add(worker)

    def on_health_changed(self, event: HealthChanged) -> None:
        """Ejected workers are probed twice as often; back in service, at the usual pace."""
        worker = event.worker
        if "ejected" in (event.old, event.new) and self.has_job(worker.id):
            _detached(self._scheduler.reschedule_job, worker.id, trigger=self._trigger(worker))

    async def _probe(self, worker: Worker) -> None:
        if worker.removed:
            return
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            result = await self.prober.probe(worker)
            if worker.removed:
                return
            self.monitor.probe_result(worker, result)
            # The engine's own load, read with the probe (never per request). An ejected
            # worker gets no traffic: its load does not matter until it is back.
            alive = result.ok and worker.status != "ejected"
            worker.set_engine_load(await self.prober.read_engine(worker) if alive else None)
        except asyncio.CancelledError:
            if self._scheduler.running:
                raise
            return  # shutdown() cancelled it: the job ends quietly, not as a failed job
        except Exception as exc:  # a bug in a probe must not kill its job
            log.exception("probe_crashed", worker=worker.id, error=repr(exc))
            return
        finally:
            self._in_flight.discard(task)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _detached(call: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """`call` in an empty context: the timers and probe tasks it starts inherit nothing of ours."""
    return contextvars.Context().run(call, *args, **kwargs)
