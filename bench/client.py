"""A lean HTTP/1.1 client for load generation: keep-alive connections on asyncio and httptools.

The load generator shares core 1 with the workers, so it must cost a few microseconds per read
where aiohttp costs tens: one parser in C per connection, and the request's bytes built once.
"""

from __future__ import annotations

import asyncio
import math
import resource
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httptools
import uvloop

T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """Where requests go and the bytes of one request, built once."""

    host: str
    port: int
    request: bytes

    @classmethod
    def post(cls, url: str, body: bytes, headers: dict[str, str] | None = None) -> Target:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        head = (
            f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            + "\r\n"
        )
        return cls(host, port, head.encode() + body)


class Connection(asyncio.Protocol):
    """One keep-alive connection. `send` writes a request and returns the status once the whole
    answer is in; `on_headers` and `on_body` (each piece of the de-chunked body) are called as
    the answer arrives."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[int] | None = None
        self.on_headers_cb: Callable[[], None] | None = None
        self.on_body_cb: Callable[[bytes], None] | None = None
        self.reusable = True

    @classmethod
    async def open(cls, target: Target) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, target.host, target.port)
        return conn

    async def send(
        self,
        request: bytes,
        on_headers: Callable[[], None] | None = None,
        on_body: Callable[[bytes], None] | None = None,
    ) -> int:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("connection closed")
        self.on_headers_cb, self.on_body_cb = on_headers, on_body
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.done

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._fail(exc or ConnectionResetError("connection closed by the server"))

    # httptools callbacks
    def on_headers_complete(self) -> None:
        if self.on_headers_cb is not None:
            self.on_headers_cb()

    def on_body(self, body: bytes) -> None:
        if self.on_body_cb is not None:
            self.on_body_cb(body)

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        if self.done is not None and not self.done.done():
            self.done.set_result(self.parser.get_status_code())

    def _fail(self, exc: BaseException) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a load on uvloop, in this process (which the benchmark pins to the load core)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def own_cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (wrk)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]
