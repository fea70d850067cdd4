"""Transports that answer without sockets, for tests of the request path.

- `FakeTransport`, as httpx's `MockTransport`: a handler gets every request and returns a
  `FakeResponse` (or raises `TransportError`), so a test says in a few lines what each worker
  does: answer, fail, stream, break off, stall.
- `FakeFleet`: fake LLM workers (`balancer.fakes.worker`, the ASGI app behind
  `balancer fake-worker`) called in-process by host name, with a transport for forwarding and a
  client for probes. A stopped host refuses connections, as a killed worker does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message

from balancer.fakes.worker import Behaviour, FakeWorker
from balancer.forwarding.transport import TransportError
from probes.client import TooLarge, Unreachable


@dataclass(frozen=True, slots=True)
class SentRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None

    def json(self) -> Any:
        return orjson.loads(self.body or b"null")


class FakeResponse:
    """A worker's answer: `body` (or `json`) whole, or `chunks` one by one; then `error`
    (a stream broken off) or `stall` (a stream that stops without ending)."""

    def __init__(
        self,
        status: int = 200,
        *,
        json: Any = None,
        body: bytes = b"",
        chunks: Sequence[bytes] = (),
        headers: Mapping[str, str] | None = None,
        error: TransportError | None = None,
        stall: bool = False,
    ) -> None:
        self.status = status
        content_type = "text/event-stream" if chunks else "application/json"
        self.headers: Mapping[str, str] = {"Content-Type": content_type, **(headers or {})}
        self._body = orjson.dumps(json) if json is not None else body
        self._chunks = list(chunks)
        self._error = error
        self._stall = stall
        self.closed = False
        self.chunks_read = 0

    async def read(self) -> bytes:
        if self._error is not None:
            raise self._error
        return self._body + b"".join(self._chunks)

    async def chunks(self) -> AsyncIterator[bytes]:
        # As aiohttp: never an empty chunk.
        for chunk in self._chunks or ([self._body] if self._body else []):
            self.chunks_read += 1
            yield chunk
        if self._stall:
            await asyncio.Event().wait()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self.closed = True


Handler = Callable[[SentRequest], Awaitable[FakeResponse]]


class FakeTransport:
    """Every request goes to `handler`; what was sent and answered is kept for assertions."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sent: list[SentRequest] = []
        self.responses: list[FakeResponse] = []

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> FakeResponse:
        request = SentRequest(method, url, dict(headers), body)
        self.sent.append(request)
        response = await self.handler(request)
        self.responses.append(response)
        return response

    async def close(self) -> None:
        pass


@dataclass
class FakeFleet:
    """Fake workers by host name (`http://<name>/...`), served in-process."""

    workers: dict[str, FakeWorker] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)
    requests: list[SentRequest] = field(default_factory=list)
    """Every request sent to the fleet (probes too), in order."""

    def add(self, name: str, **behaviour: Any) -> str:
        """A new worker; returns its base URL."""
        self.workers[name] = FakeWorker(Behaviour(name=name, **behaviour), seed=len(self.workers))
        return f"http://{name}"

    def transport(self, stream_idle_timeout: float | None = None) -> FleetTransport:
        return FleetTransport(self, stream_idle_timeout)

    def probe_client(self) -> FleetProbeClient:
        return FleetProbeClient(self)

    def app_for(self, url: str) -> ASGIApp | None:
        host = urlsplit(url).netloc
        return None if host in self.stopped else self.workers.get(host)


class FleetTransport:
    def __init__(self, fleet: FakeFleet, stream_idle_timeout: float | None = None) -> None:
        self.fleet = fleet
        self.stream_idle_timeout = stream_idle_timeout

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> _AsgiResponse:
        self.fleet.requests.append(SentRequest(method, url, headers, body))
        app = self.fleet.app_for(url)
        if app is None:
            raise TransportError("connect", "cannot connect to the worker: it is down")
        response = _AsgiResponse(app, method, url, headers, body, self.stream_idle_timeout)
        await response.start()
        return response

    async def close(self) -> None:
        pass


class _AsgiResponse:
    """An ASGI app's answer, streamed from its task as it sends."""

    def __init__(
        self,
        app: ASGIApp,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        idle_timeout: float | None,
    ) -> None:
        parts = urlsplit(url)
        self._scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": parts.scheme,
            "path": parts.path or "/",
            "raw_path": (parts.path or "/").encode(),
            "query_string": parts.query.encode(),
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "server": (parts.hostname or "worker", parts.port or 80),
        }
        self._app = app
        self._request_body = body or b""
        self._idle_timeout = idle_timeout
        self._messages: asyncio.Queue[Message | BaseException] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.status = 0
        self.headers: Mapping[str, str] = {}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        first = await self._next()
        if first["type"] != "http.response.start":
            raise TransportError("reset", "the worker answered without a status")
        self.status = first["status"]
        # Case-insensitive, as aiohttp's are: the relay asks for "Retry-After", "Content-Type".
        self.headers = Headers(raw=[(bytes(k), bytes(v)) for k, v in first.get("headers", [])])

    async def _run(self) -> None:
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # no disconnect until the response is done
            sent = True
            return {"type": "http.request", "body": self._request_body, "more_body": False}

        async def send(message: Message) -> None:
            await self._messages.put(message)

        try:
            await self._app(self._scope, receive, send)
        except Exception as exc:
            await self._messages.put(exc)

    async def _next(self, timeout: float | None = None) -> Message:
        try:
            item = await asyncio.wait_for(self._messages.get(), timeout)
        except TimeoutError:
            raise TransportError(
                "timeout", "the worker stopped sending (stream idle timeout)"
            ) from None
        if isinstance(item, BaseException):
            raise TransportError("reset", f"connection to the worker failed: {item!r}")
        return item

    async def read(self) -> bytes:
        body = b""
        while True:
            message = await self._next()
            body += bytes(message.get("body", b""))
            if not message.get("more_body", False):
                return body

    async def chunks(self) -> AsyncIterator[bytes]:
        # As the real transport: the first chunk may take the attempt's time, the gaps after
        # it are bounded by the stream idle timeout.
        gap: float | None = None
        while True:
            message = await self._next(gap)
            body = bytes(message.get("body", b""))
            if body:
                gap = self._idle_timeout
                yield body
            if not message.get("more_body", False):
                return

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


class FleetProbeClient:
    """The fleet for the prober (a `probes.client.ProbeClient`), through the same transport."""

    def __init__(self, fleet: FakeFleet) -> None:
        self._transport = FleetTransport(fleet)

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None
    ) -> int:
        try:
            response = await self._transport.request(method, url, headers=headers, body=body)
            try:
                await response.read()
            finally:
                response.close()
        except TransportError as exc:
            raise Unreachable(exc.message) from exc
        return response.status

    async def get(self, url: str, *, headers: Mapping[str, str], limit: int) -> tuple[int, bytes]:
        try:
            response = await self._transport.request("GET", url, headers=headers, body=None)
            try:
                body = await response.read()
            finally:
                response.close()
        except TransportError as exc:
            raise Unreachable(exc.message) from exc
        if len(body) > limit:
            raise TooLarge(f"answer larger than {limit} bytes")
        return response.status, body

    async def aclose(self) -> None:
        pass
