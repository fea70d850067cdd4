"""Sending a request to a model: pick a worker, try it, fail over to another, relay streams.

The layers, outermost first: `Forwarder.run` (choose, fail over) → the caller's attempt function
(one worker) → `calls` (what is sent) → the transport (bytes).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
import structlog

from balancer.calls import (
    RETRYABLE_STATUS,
    openai_url,
    read_all,
    send,
    status_failure,
    transport_failure,
    upstream_headers,
)
from balancer.errors import ModelNotFound, NoWorkerAvailable, UpstreamError
from balancer.events import ForwardingObserver
from balancer.logging import get_logger
from balancer.registry import Registry, Worker
from balancer.selection import Selector
from balancer.transport import Transport, TransportError
from balancer.types import Clock

T = TypeVar("T")
log = get_logger("balancer.forwarding")


class Lease:
    """A worker's in-flight slot, held for one attempt (or for a whole relayed stream).

    Taken before the first await and released exactly once, whichever path ends the attempt.
    """

    __slots__ = ("_clock", "_observers", "_released", "detached", "started", "worker")

    def __init__(
        self, worker: Worker, clock: Clock, observers: Sequence[ForwardingObserver] = ()
    ) -> None:
        worker.inflight += 1
        self.worker = worker
        self._clock = clock
        self._observers = observers
        self.started = clock()
        self.detached = False
        self._released = False

    def succeeded(self) -> None:
        """The worker answered: record the time since the attempt started (to the first byte
        for streams, the whole call otherwise)."""
        seconds = self._clock() - self.started
        self.worker.latency_ms = seconds * 1000.0
        for observer in self._observers:
            observer.attempt_succeeded(self.worker, seconds)

    def failed(self, error: UpstreamError) -> None:
        for observer in self._observers:
            observer.attempt_failed(self.worker, error)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.worker.inflight -= 1


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
        max_retries: int,
        clock: Clock = time.monotonic,
        observers: Sequence[ForwardingObserver] = (),
    ) -> None:
        self.registry = registry
        self.selector = selector
        self.transport = transport
        self.max_retries = max_retries
        self.clock = clock
        self.observers = list(observers)

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
        why_none: str = "",
    ) -> Served[T]:
        """Try workers of `model` until one succeeds, never the same worker twice.

        An attempt raises a retryable UpstreamError to hand the request to another worker; an
        attempt that keeps its lease (a stream still being relayed) sets `lease.detached`.
        """
        workers = self.workers_of(model)
        structlog.contextvars.bind_contextvars(model=model)
        tried: list[str] = []
        last: UpstreamError | None = None
        for _ in range(1 + self.max_retries):
            worker, panic = self.selector.choose(model, workers, exclude=tried, accept=accept)
            if worker is None:
                break
            if panic:
                log.warning("panic_routing", model=model, worker=worker.id)
                for observer in self.observers:
                    observer.panic(model, worker)
            tried.append(worker.id)
            lease = Lease(worker, self.clock, self.observers)
            try:
                value = await attempt(lease)
            except UpstreamError as exc:
                lease.failed(exc)
                if not exc.retryable:
                    raise
                last = exc
                log.info("attempt_failed", model=model, worker=worker.id, error=exc.message)
                continue
            finally:
                # Cancellation (client gone) also lands here: the slot is freed either way.
                if not lease.detached:
                    lease.release()
            if not lease.detached:
                lease.succeeded()
            structlog.contextvars.bind_contextvars(worker=worker.id, attempts=len(tried))
            return Served(value, worker, len(tried))
        if last is None:
            raise NoWorkerAvailable(
                why_none or f"no worker of model {model} can serve this request", model=model
            )
        if len(tried) == 1:
            raise last
        raise NoWorkerAvailable(
            f"all {len(tried)} workers tried for model {model} failed; last error: {last.message}",
            model=model,
        )


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
            raise status_failure(worker, url, resp.status, data)
        # Other client errors (400, 401, 404, ...) are the upstream's word: relay them unchanged.
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

    return Relayed(
        200, content_type, stream=_relay_rest(first, chunks, close, lease, url), close=close
    )


async def _relay_rest(
    first: bytes,
    chunks: AsyncIterator[bytes],
    close: Callable[[], None],
    lease: Lease,
    url: str,
) -> AsyncIterator[bytes]:
    try:
        yield first
        try:
            async for chunk in chunks:
                yield chunk
        except TransportError as exc:
            # Too late to fail over: the client has our headers. End with an error event
            # (and no [DONE]) so the openai SDK raises instead of returning a cut answer.
            worker = lease.worker
            log.warning("stream_broken", model=worker.model, worker=worker.id, error=exc.message)
            message = f"worker {worker.id} ({url}) broke off the stream: {exc.message}"
            lease.failed(UpstreamError(message, model=worker.model, worker=worker.id))
            yield sse_error(message)
    finally:
        close()


def sse_error(message: str, code: str = "upstream_error") -> bytes:
    error: dict[str, Any] = {"message": message, "type": "server_error", "code": code}
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"
