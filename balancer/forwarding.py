"""Sending a request to a model: pick a worker, try it, fail over to another, relay streams.

The layers, outermost first: `Forwarder.run` (choose, fail over) → the caller's attempt function
(one worker) → `calls` (what is sent) → the transport (bytes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
import structlog

from balancer.accounting import CallRecord, current_call, record_tokens, usage_counts
from balancer.calls import (
    RETRYABLE_STATUS,
    openai_url,
    read_all,
    send,
    status_failure,
    transport_failure,
    upstream_headers,
)
from balancer.errors import BalancerError, ModelNotFound, NoWorkerAvailable, UpstreamError
from balancer.events import ForwardingObserver
from balancer.logging import get_logger
from balancer.registry import Registry, Worker
from balancer.retry_budget import RetryBudget
from balancer.selection import Choice, Selector
from balancer.sse import StreamTap
from balancer.transport import Transport, TransportError
from balancer.types import Clock

T = TypeVar("T")

DEFAULT_MAX_RETRIES = 2
DEFAULT_REQUEST_TIMEOUT = 600.0
DEFAULT_QUEUE_TIMEOUT = 30.0
log = get_logger("balancer.forwarding")


class Lease:
    """A worker's in-flight slot, held for one attempt (or for a whole relayed stream).

    Taken before the first await and released exactly once, whichever path ends the attempt.
    """

    __slots__ = (
        "_clock",
        "_observers",
        "_on_release",
        "_released",
        "call",
        "detached",
        "started",
        "worker",
    )

    def __init__(
        self,
        worker: Worker,
        clock: Clock,
        observers: Sequence[ForwardingObserver] = (),
        on_release: Callable[[Worker], None] | None = None,
    ) -> None:
        worker.inflight += 1
        self.worker = worker
        self._clock = clock
        self._observers = observers
        self._on_release = on_release
        self.call = current_call.get()
        self.started = clock()
        self.detached = False
        self._released = False

    def succeeded(self) -> None:
        """The worker answered: record the time since the attempt started (to the first byte
        for streams, the whole call otherwise)."""
        seconds = self._clock() - self.started
        self.worker.latency_ms = seconds * 1000.0
        if self.call is not None:
            self.call.upstream_seconds += seconds
            self.call.worker = self.worker.id
            self.call.generation_seconds = seconds  # a stream replaces it when it ends
        for observer in self._observers:
            observer.attempt_succeeded(self.worker, seconds)

    def failed(self, error: UpstreamError) -> None:
        seconds = self._clock() - self.started
        if self.call is not None and not self.detached:
            self.call.upstream_seconds += seconds
        for observer in self._observers:
            observer.attempt_failed(self.worker, error, seconds)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.worker.inflight -= 1
            if self._on_release is not None:
                self._on_release(self.worker)


@dataclass(slots=True)
class Served(Generic[T]):
    value: T
    worker: Worker
    attempts: int


class Forwarder:
    def __init__(
        self,
        registry: Registry,
        selector: Selector,
        transport: Transport,
        *,
        max_retries: int = DEFAULT_MAX_RETRIES,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
        budget: Callable[[], RetryBudget] = RetryBudget,
        clock: Clock = time.monotonic,
        observers: Sequence[ForwardingObserver] = (),
    ) -> None:
        self.registry = registry
        self.selector = selector
        self.transport = transport
        self.max_retries = max_retries
        self.request_timeout = request_timeout
        self.queue_timeout = queue_timeout
        self.clock = clock
        self.observers = [selector, *observers]
        self._new_budget = budget
        self._budgets: dict[str, RetryBudget] = {}
        # Set (and replaced) when a slot of the model frees up; requests waiting for capacity
        # wait on it. Only models with waiters have one.
        self._capacity: dict[str, asyncio.Event] = {}

    def workers_of(self, model: str) -> list[Worker]:
        workers = self.registry.workers_of(model)
        if not workers:
            raise ModelNotFound(model)
        return workers

    async def run(
        self,
        model: str,
        attempt: Callable[[Lease], Awaitable[T]],
        *,
        accept: Callable[[Worker], bool] | None = None,
    ) -> Served[T]:
        """Serve a request with a worker of `model`, or of its fallbacks when none can.

        An attempt raises a retryable UpstreamError to hand the request to another worker; an
        attempt that keeps its lease (a stream still being relayed) sets `lease.detached`.
        """
        workers = self.workers_of(model)
        structlog.contextvars.bind_contextvars(model=model)
        call = current_call.get()
        if call is not None:
            call.model = model
        deadline = self.clock() + self.request_timeout
        outcome = await self._run_model(model, workers, attempt, accept, deadline)
        if isinstance(outcome, Served):
            return outcome
        attempts = outcome.attempts
        for fallback in self.registry.options(model).fallbacks:
            fallback_workers = self.registry.workers_of(fallback)
            if not fallback_workers:
                continue
            log.info("fallback", model=model, fallback=fallback, reason=outcome.reason)
            result = await self._run_model(fallback, fallback_workers, attempt, accept, deadline)
            attempts += result.attempts
            if isinstance(result, Served):
                result.attempts = attempts
                return result
        error: BalancerError
        if attempts == 1 and outcome.last is not None and not outcome.budget_spent:
            error = outcome.last  # one worker, one failure: its own words are the clearest
        else:
            error = NoWorkerAvailable(f"model {model}: {outcome.reason}", model=model)
            error.worker = outcome.last.worker if outcome.last else None
        error.attempts = attempts
        raise error

    async def _run_model(
        self,
        model: str,
        workers: list[Worker],
        attempt: Callable[[Lease], Awaitable[T]],
        accept: Callable[[Worker], bool] | None,
        deadline: float,
    ) -> Served[T] | _Unserved:
        """Try workers of one model, never the same one twice, within the retry budget."""
        strategy = self.registry.options(model).strategy
        budget = self._budgets.get(model)
        if budget is None:
            budget = self._budgets[model] = self._new_budget()
        budget.deposit(self.clock())
        tried: list[str] = []
        last: UpstreamError | None = None
        queue_deadline = min(self.clock() + self.queue_timeout, deadline)
        while len(tried) <= self.max_retries:
            choice = self.selector.choose(
                model, workers, exclude=tried, accept=accept, strategy=strategy
            )
            worker = choice.worker
            if worker is None:
                if choice.why == "at_capacity" and await self._wait_for_capacity(
                    model, queue_deadline
                ):
                    continue
                return _Unserved(len(tried), last, _why_none(model, workers, choice, last))
            if tried:
                now = self.clock()
                if now >= deadline:
                    return _Unserved(
                        len(tried),
                        last,
                        f"request deadline passed; last error: {last.message if last else ''}",
                    )
                if not budget.try_withdraw(now):
                    log.warning("retry_budget_exhausted", model=model)
                    return _Unserved(
                        len(tried),
                        last,
                        "retry budget exhausted (the model is "
                        f"failing too often to retry); last error: "
                        f"{last.message if last else ''}",
                        budget_spent=True,
                    )
                for observer in self.observers:
                    observer.retried(model, last.reason if last else "unknown")
            if choice.panic:
                log.warning("panic_routing", model=model, worker=worker.id)
                for observer in self.observers:
                    observer.panic(model, worker)
            tried.append(worker.id)
            lease = Lease(worker, self.clock, self.observers, self._on_release)
            try:
                value = await attempt(lease)
            except UpstreamError as exc:
                exc.attempts = len(tried)
                if not exc.retryable:
                    # The worker answered, with a client error of the caller's making: it is
                    # alive and no slower for it.
                    lease.succeeded()
                    raise
                lease.failed(exc)
                if exc.retry_after:
                    worker.skip_until = self.clock() + exc.retry_after
                last = exc
                log.info("attempt_failed", model=model, worker=worker.id, error=exc.message)
                continue
            finally:
                # Cancellation (the client left) lands here too: the slot is freed either way.
                if not lease.detached:
                    lease.release()
            if not lease.detached:
                lease.succeeded()
            structlog.contextvars.bind_contextvars(worker=worker.id, attempts=len(tried))
            return Served(value, worker, len(tried))
        return _Unserved(
            len(tried),
            last,
            f"all {len(tried)} attempts failed; last error: {last.message if last else ''}",
        )

    async def _wait_for_capacity(self, model: str, until: float) -> bool:
        """Wait until a slot of the model frees up; False once `until` has passed."""
        started = self.clock()
        remaining = until - started
        if remaining <= 0:
            return False
        event = self._capacity.get(model)
        if event is None:
            event = self._capacity[model] = asyncio.Event()
        try:
            await asyncio.wait_for(event.wait(), remaining)
        except TimeoutError:
            return False
        finally:
            waited = self.clock() - started
            for observer in self.observers:
                observer.queued(model, waited)
        return True

    def _on_release(self, worker: Worker) -> None:
        event = self._capacity.pop(worker.model, None)
        if event is not None:
            event.set()

    def forget(self, model: str) -> None:
        """The model's last worker is gone: drop its budget."""
        self._budgets.pop(model, None)


@dataclass(slots=True)
class _Unserved:
    attempts: int
    last: UpstreamError | None
    reason: str
    budget_spent: bool = False


def _why_none(model: str, workers: list[Worker], choice: Choice, last: UpstreamError | None) -> str:
    if choice.why == "at_capacity":
        return "every worker is at its max_concurrency and none freed up in time"
    if choice.why == "backing_off":
        return "every worker asked to back off (429 with Retry-After)"
    if last is not None:
        ejected = all(w.status == "ejected" for w in workers)
        note = " (all workers are ejected)" if ejected else ""
        return f"every worker failed{note}; last error: {last.message}"
    return "no worker of this model can serve this request"


@dataclass(slots=True)
class Relayed:
    """An OpenAI worker's answer, to pass to the client as it is."""

    status: int
    content_type: str
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    # Frees the worker's slot and connection if the client left before the stream was read.
    close: Callable[[], None] | None = None


async def relay_openai(
    transport: Transport,
    lease: Lease,
    path: str,
    payload: bytes,
    *,
    stream: bool,
    request_id: str | None,
    strip_usage: bool = False,
) -> Relayed:
    """One attempt at an OpenAI-compatible worker, body passed through.

    For a stream the first chunk is awaited here, before the client has seen anything, so a worker
    that refuses or fails before its first byte can still be swapped for another.
    """
    worker = lease.worker
    url = openai_url(worker, path)
    resp = await send(
        transport,
        worker,
        "POST",
        url,
        body=payload,
        headers=upstream_headers(worker, request_id, "application/json"),
    )
    content_type = resp.headers.get("Content-Type", "application/json")
    if not stream or resp.status != 200:
        data = await read_all(worker, url, resp)
        if resp.status in RETRYABLE_STATUS:
            raise status_failure(worker, url, resp.status, data, resp.headers)
        # Other client errors (400, 401, 404, ...) are the upstream's word: relay them unchanged.
        if resp.status == 200 and b'"usage"' in data:
            _record_usage(data)
        return Relayed(resp.status, content_type, body=data)
    chunks = resp.chunks()
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        resp.close()
        raise UpstreamError(
            f"worker {worker.id} ({url}) ended the stream before sending anything",
            model=worker.model,
            worker=worker.id,
            retryable=True,
            reason="reset",
        ) from None
    except TransportError as exc:
        resp.close()
        raise transport_failure(worker, url, exc) from None
    except BaseException:
        resp.close()
        raise
    lease.succeeded()
    lease.detached = True

    def close() -> None:
        resp.close()
        lease.release()

    tap = StreamTap(strip_usage=strip_usage)
    return Relayed(
        200, content_type, stream=_relay_rest(first, chunks, close, lease, url, tap), close=close
    )


async def _relay_rest(
    first: bytes,
    chunks: AsyncIterator[bytes],
    close: Callable[[], None],
    lease: Lease,
    url: str,
    tap: StreamTap,
) -> AsyncIterator[bytes]:
    call = lease.call
    first_at = last_at = time.perf_counter()
    if call is not None:
        call.first_byte_at = first_at
    token_seen = False
    try:
        if call is not None and tap.has_token(first):
            call.ttft, token_seen = first_at - call.started, True
        yield tap.feed(first)
        try:
            async for chunk in chunks:
                last_at = time.perf_counter()
                if not token_seen and call is not None and tap.has_token(chunk):
                    call.ttft, token_seen = last_at - call.started, True
                out = tap.feed(chunk)
                if out:
                    yield out
            tail = tap.flush()
            if tail:
                yield tail
        except TransportError as exc:
            # Too late to fail over: the client has our headers. End with an error event
            # (and no [DONE]) so the openai SDK raises instead of returning a cut answer.
            worker = lease.worker
            log.warning("stream_broken", model=worker.model, worker=worker.id, error=exc.message)
            message = f"worker {worker.id} ({url}) broke off the stream: {exc.message}"
            lease.failed(
                UpstreamError(message, model=worker.model, worker=worker.id, reason=exc.kind)
            )
            yield sse_error(message)
    finally:
        close()
        if call is not None:
            _record_stream_tokens(call, tap, first_at, last_at)


def _record_usage(body: bytes) -> None:
    try:
        counts = usage_counts(orjson.loads(body))
    except orjson.JSONDecodeError:
        return
    if counts is not None:
        record_tokens(*counts, estimated=False)


def _record_stream_tokens(
    call: CallRecord, tap: StreamTap, first_at: float, last_at: float
) -> None:
    if tap.usage is not None:
        call.input_tokens, call.output_tokens = tap.usage
        call.tokens_estimated = False
    elif tap.content_chunks:
        call.output_tokens, call.tokens_estimated = tap.content_chunks, True
    if last_at > first_at:
        call.generation_seconds = last_at - first_at


def sse_error(message: str, code: str = "upstream_error") -> bytes:
    error: dict[str, Any] = {"message": message, "type": "server_error", "code": code}
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"
