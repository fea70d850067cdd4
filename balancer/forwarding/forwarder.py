"""Serving a request with a worker of its model, in three layers, outermost first:

- `Forwarder.run`: the model, then its fallbacks in order, until one serves;
- `_failover`: within one model, choose a worker, try it, and on a retryable failure try another
  (never the same one twice), within the retry budget and the request's deadline, waiting for
  capacity when every worker is at its `max_concurrency`;
- `_attempt`: one worker, its slot held in a `Lease` that is released exactly once, within the
  worker's `timeout` (a whole answer, or a stream's first chunk) and what is left of the
  request's deadline: a worker that takes longer than its own timeout is charged and the request
  goes on to another; a request whose deadline passes ends with a 504 at once.

The caller's attempt function does the I/O (`relay.py`, `prompt.py`); to hand the request to
another worker it raises a retryable UpstreamError. What happens is sent as events.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Generic, TypeVar

import structlog

from balancer.config import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_RETRY_AFTER,
    DEFAULT_QUEUE_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_WORKER_TIMEOUT,
)
from balancer.errors import (
    BalancerError,
    DeadlineExceeded,
    ModelNotFound,
    NoWorkerAvailable,
    UpstreamError,
    UpstreamTimeout,
)
from balancer.events import (
    Events,
    Panic,
    Queued,
    RegistryChanged,
    ReplicasChanged,
    RequestRecord,
    Retried,
)
from balancer.forwarding.capacity import CapacityQueue
from balancer.forwarding.deadlines import Deadlines
from balancer.forwarding.lease import Lease
from balancer.forwarding.retry_budget import RetryBudget
from balancer.logging import get_logger
from balancer.registry import Worker, WorkerRegistry
from balancer.selection import Choice, Selector
from balancer.types import Clock

T = TypeVar("T")
Attempt = Callable[[Lease], Awaitable[T]]
log = get_logger("balancer.forwarding")

QUEUE_FULL_RETRY_AFTER = 1.0
"""Seconds a client refused because its model's line is full is told to wait (Retry-After)."""


@dataclass(slots=True)
class Served(Generic[T]):
    value: T
    worker: Worker
    attempts: int


@dataclass(slots=True)
class _Unserved:
    attempts: int
    last: UpstreamError | None
    reason: str
    retry_after: float | None = None


class Forwarder:
    def __init__(
        self,
        registry: WorkerRegistry,
        selector: Selector,
        *,
        events: Events | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
        max_queue: int = DEFAULT_MAX_QUEUE,
        worker_timeout: float = DEFAULT_WORKER_TIMEOUT,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        budget: Callable[[], RetryBudget] = RetryBudget,
        clock: Clock = time.monotonic,
    ) -> None:
        self.registry = registry
        self.selector = selector
        self.events = events or Events()
        self.max_retries = max_retries
        self.request_timeout = request_timeout
        self.queue_timeout = queue_timeout
        self.worker_timeout = worker_timeout
        self.max_retry_after = max_retry_after
        self.clock = clock
        self._new_budget = budget
        self._budgets: dict[str, RetryBudget] = {}
        self._capacity = CapacityQueue(max_queue)
        self._deadlines = Deadlines()

    def workers_of(self, model: str) -> list[Worker]:
        workers = self.registry.workers_of(model)
        if not workers:
            raise ModelNotFound(model)
        return workers

    async def run(
        self,
        record: RequestRecord,
        model: str,
        attempt: Attempt[T],
        *,
        accept: Callable[[Worker], bool] | None = None,
    ) -> Served[T]:
        """Serve a request with a worker of `model`, or of its fallbacks when none can."""
        workers = self.workers_of(model)
        structlog.contextvars.bind_contextvars(model=model)
        record.model = model
        deadline = self.clock() + self.request_timeout
        outcome = await self._failover(record, model, workers, attempt, accept, deadline)
        if isinstance(outcome, Served):
            return outcome
        attempts = outcome.attempts
        last = outcome.last
        why = [f"model {model}: {outcome.reason}"]
        for fallback in self.registry.options(model).fallbacks:
            fallback_workers = self.registry.workers_of(fallback)
            if not fallback_workers or self.clock() >= deadline:
                continue
            log.info("fallback", model=model, fallback=fallback, reason=outcome.reason)
            result = await self._failover(
                record, fallback, fallback_workers, attempt, accept, deadline
            )
            attempts += result.attempts
            if isinstance(result, Served):
                result.attempts = attempts
                return result
            last = result.last or last
            why.append(f"fallback {fallback}: {result.reason}")
        error: BalancerError
        if self.clock() >= deadline:
            error = DeadlineExceeded(
                f"model {model}: no answer within the request timeout "
                f"({self.request_timeout:g} s, BALANCER_REQUEST_TIMEOUT)"
                + (f"; last error: {last.message}" if last else ""),
                model=model,
            )
        else:
            error = NoWorkerAvailable("; ".join(why), model=model)
            error.retry_after = outcome.retry_after
        error.worker = last.worker if last else None
        error.attempts = attempts
        raise error

    async def _failover(
        self,
        record: RequestRecord,
        model: str,
        workers: list[Worker],
        attempt: Attempt[T],
        accept: Callable[[Worker], bool] | None,
        deadline: float,
    ) -> Served[T] | _Unserved:
        """Try workers of one model, never the same one twice, within the retry budget."""
        strategy = self.registry.options(model).strategy
        key = record.routing_key
        budget = self._budgets.get(model)
        if budget is None:
            budget = self._budgets[model] = self._new_budget()
        budget.deposit(self.clock())
        tried: list[str] = []
        last: UpstreamError | None = None
        queue_deadline = min(self.clock() + self.queue_timeout, deadline)
        # `tried` grows in place: each call excludes every worker tried so far.
        choose = partial(
            self.selector.choose,
            model,
            workers,
            exclude=tried,
            accept=accept,
            strategy=strategy,
            key=key,
            session=record.session,
        )
        while len(tried) <= self.max_retries:
            choice = choose()
            if choice.why == "at_capacity":
                queued = await self._wait_for_capacity(model, choose, queue_deadline)
                if queued is None:
                    return _Unserved(
                        len(tried),
                        last,
                        "every worker is at its max_concurrency and the queue is full "
                        f"({self._capacity.max_waiting} waiting, BALANCER_MAX_QUEUE)",
                        retry_after=QUEUE_FULL_RETRY_AFTER,
                    )
                choice = queued
            worker = choice.worker
            if worker is None:
                return _Unserved(len(tried), last, _why_none(workers, choice, last))
            now = self.clock()
            if now >= deadline:
                # The free slot this request chose (perhaps woken for) goes to the next in line.
                self._capacity.released(worker)
                return _Unserved(len(tried), last, "the request timeout passed")
            if tried:
                if not budget.try_withdraw(now):
                    self._capacity.released(worker)
                    log.warning("retry_budget_exhausted", model=model)
                    return _Unserved(
                        len(tried),
                        last,
                        "retry budget exhausted (the model is failing too often to retry); "
                        f"last error: {last.message if last else ''}",
                    )
                if self.events.retried:
                    self.events.retried.send(Retried(model, last.reason if last else "unknown"))
            if choice.panic:
                log.warning("panic_routing", model=model, worker=worker.id)
                if self.events.panic:
                    self.events.panic.send(Panic(model, worker))
            tried.append(worker.id)
            try:
                value = await self._attempt(record, worker, attempt, deadline)
            except (UpstreamError, DeadlineExceeded) as exc:
                exc.attempts = len(tried)
                if not isinstance(exc, UpstreamError) or not exc.retryable:
                    raise
                if exc.retry_after:
                    worker.skip_until = self.clock() + min(exc.retry_after, self.max_retry_after)
                last = exc
                log.info("attempt_failed", model=model, worker=worker.id, error=exc.message)
                continue
            structlog.contextvars.bind_contextvars(worker=worker.id, attempts=len(tried))
            return Served(value, worker, len(tried))
        return _Unserved(
            len(tried),
            last,
            f"all {len(tried)} attempts failed; last error: {last.message if last else ''}",
        )

    async def _attempt(
        self, record: RequestRecord, worker: Worker, attempt: Attempt[T], deadline: float
    ) -> T:
        """One attempt on one worker; its outcome is reported, its slot freed exactly once."""
        own = worker.spec.timeout or self.worker_timeout
        left = deadline - self.clock()
        lease = Lease(
            worker, record, clock=self.clock, events=self.events, on_release=self._capacity.released
        )
        limit = self._deadlines.limit(min(own, left))
        try:
            with limit:
                value = await attempt(lease)
        except TimeoutError:
            if not limit.expired:
                raise
            if own >= left:
                # The request's own time ran out, not the worker's: nothing to charge it with.
                raise DeadlineExceeded(
                    f"no answer within the request timeout ({self.request_timeout:g} s, "
                    f"BALANCER_REQUEST_TIMEOUT); worker {worker.id} was still working on it",
                    model=worker.model,
                    worker=worker.id,
                ) from None
            error = UpstreamTimeout(
                f"worker {worker.id} gave no answer within its timeout of {own:g} s",
                model=worker.model,
                worker=worker.id,
                retryable=True,
                reason="timeout",
            )
            lease.failed(error)
            raise error from None
        except UpstreamError as exc:
            if exc.retryable:
                lease.failed(exc)
            else:
                # The worker answered, with a client error of the caller's making: it is alive
                # and no slower for it.
                lease.succeeded(answered=False)
            raise
        finally:
            # Cancellation (the client left) lands here too: the slot is freed either way,
            # unless a stream took the lease over (it frees it when it ends).
            if not lease.detached:
                lease.release()
        if not lease.detached:
            lease.succeeded()
        return value

    async def _wait_for_capacity(
        self, model: str, choose: Callable[[], Choice], until: float
    ) -> Choice | None:
        """Wait in the model's line until `choose` gets a worker, finds none for another
        reason than capacity, or `until` passes; None when the line is full. The wait is
        observed once, however many wake-ups it took."""
        choice = Choice(None, why="at_capacity")
        started = self.clock()
        if until <= started:
            return choice
        place = self._capacity.join(model)
        if place is None:
            return None
        try:
            while (left := until - self.clock()) > 0:
                freed = await place.wait(left)
                if freed is None:
                    break
                choice = choose()
                if choice.worker is None and not freed.at_capacity:
                    # The freed slot is one this request cannot use (a worker it tried, or
                    # one of the wrong API): the next in line may.
                    place.pass_on(freed)
                if choice.why != "at_capacity":
                    return choice
                # Else a request that arrived as the slot was freed took it: wait on, first.
            return choice
        finally:
            # Served, given up or cancelled (the client left): out of the line either way.
            place.leave()
            if self.events.queued:
                self.events.queued.send(Queued(model, self.clock() - started))

    async def close(self) -> None:
        """At shutdown, once no request is left."""
        await self._deadlines.close()

    def on_replicas_changed(self, event: ReplicasChanged) -> None:
        """Each replica's share of a worker's max_concurrency follows the number of replicas;
        a share that grew may serve queued requests."""
        for worker in self.registry.share(event.replicas):
            self._capacity.grown(worker)

    def on_registry_changed(self, event: RegistryChanged) -> None:
        """A worker registered or updated may bring slots that queued requests wait for; the
        model's last worker gone: drop its budget."""
        if event.change != "removed":
            self._capacity.grown(event.worker)
        elif event.model_gone:
            self._budgets.pop(event.worker.model, None)


def _why_none(workers: list[Worker], choice: Choice, last: UpstreamError | None) -> str:
    if choice.why == "at_capacity":
        return "every worker is at its max_concurrency and none freed up in time"
    if choice.why == "backing_off":
        return "every worker asked to back off (429 with Retry-After)"
    if last is not None:
        ejected = all(w.status == "ejected" for w in workers)
        note = " (all workers are ejected)" if ejected else ""
        return f"every worker failed{note}; last error: {last.message}"
    return "no worker of this model can serve this request"
