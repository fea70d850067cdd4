"""How bytes reach workers: a small interface, and its real implementation on one aiohttp session.

aiohttp is used on the forwarding path because, measured per proxied request, it costs a fraction of
httpx's default transport (whose pool walks every connection on each request).
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from contextvars import ContextVar
from typing import Any, Literal, Protocol

import aiohttp

from balancer.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_UPSTREAM_BODY_BYTES,
    DEFAULT_STREAM_IDLE_TIMEOUT,
)

FailureKind = Literal["connect", "timeout", "reset", "too_large"]


class TransportError(Exception):
    """The worker could not be reached, stopped answering, or sent a larger answer than we
    take; always worth trying elsewhere."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class UpstreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes:
        """The whole body; raises TransportError (`too_large` past the transport's limit)."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises TransportError."""
        ...

    def close(self) -> None:
        """Give the connection back (or drop it if the body was not read to the end)."""
        ...


class Transport(Protocol):
    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> UpstreamResponse:
        """Send a request and return once the response headers arrived.

        How long a whole answer may take is the caller's to bound (the attempt's time limit);
        the transport bounds connecting, the gaps between chunks once a stream has started,
        and the size of a whole answer (not of a stream: generations may be long).
        """
        ...

    async def close(self) -> None: ...


STALE_WITHIN = 0.1
"""A reused connection that fails sooner than this was stale (see AiohttpTransport)."""

KEEPALIVE_SECONDS = 1.5
"""How long an idle connection to a worker is kept: shorter than servers keep theirs (uvicorn,
and so vLLM and LiteLLM, 5 s; gunicorn 2 s), so that we close it first, rarely they."""

_reused: ContextVar[bool] = ContextVar("reused", default=False)


class _Connector(aiohttp.TCPConnector):
    """Notes whether the connection a request got was reused from the pool."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._seen: weakref.WeakSet[Any] = weakref.WeakSet()

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
        conn = await super().connect(req, traces, timeout)
        protocol = conn.protocol
        reused = protocol in self._seen
        if not reused:
            self._seen.add(protocol)
        _reused.set(reused)
        return conn


class _AiohttpResponse:
    __slots__ = ("_idle_timeout", "_max_body_bytes", "_resp", "headers", "status")

    def __init__(
        self, resp: aiohttp.ClientResponse, idle_timeout: float, max_body_bytes: int
    ) -> None:
        self._resp = resp
        self._idle_timeout = idle_timeout
        self._max_body_bytes = max_body_bytes
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        # Read as it arrives, not with `resp.read()`, which holds whatever comes: aiohttp
        # decompresses a little at a time as it is read, so a small gzip bomb cannot expand
        # past the limit in memory, and neither can an answer that never ends.
        content = self._resp.content
        limit = self._max_body_bytes
        chunks = []
        size = 0
        try:
            while chunk := await content.readany():
                size += len(chunk)
                if size > limit:
                    break
                chunks.append(chunk)
        except Exception as exc:
            raise _translate(exc) from exc
        if size > limit:
            self._resp.close()  # the connection goes, with the rest of the answer
            raise TransportError(
                "too_large",
                f"the answer is larger than {limit} bytes (BALANCER_MAX_UPSTREAM_BODY_BYTES)",
            )
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def chunks(self) -> AsyncIterator[bytes]:
        idle = True
        try:
            async for chunk in self._resp.content.iter_any():
                if idle:
                    # The stream has started: from now on every gap between chunks is bounded
                    # (aiohttp's per-read timer, the one `sock_read` sets).
                    idle = False
                    self._watch_gaps()
                yield chunk
        except Exception as exc:
            raise _translate(exc) from exc

    def _watch_gaps(self) -> None:
        connection = self._resp.connection
        if connection is not None and connection.protocol is not None:
            connection.protocol.read_timeout = self._idle_timeout
            connection.protocol.start_timeout()

    def close(self) -> None:
        self._resp.release()


class AiohttpTransport:
    """All requests to workers share one session: pooled keep-alive connections per worker.

    A request that fails on a reused connection at once, before any byte of the answer came,
    is sent again once, on a fresh connection: the worker had closed the connection while it was
    idle, as its keep-alive timer fired just as we sent, and the request never reached its
    application. "At once" is within `STALE_WITHIN` seconds: a connection that breaks later
    broke while the worker was working on the request (a crash mid-generation), and sending it
    again could run a generation twice; that is the worker's failure, charged to it.
    """

    def __init__(
        self,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        stream_idle_timeout: float = DEFAULT_STREAM_IDLE_TIMEOUT,
        max_body_bytes: int = DEFAULT_MAX_UPSTREAM_BODY_BYTES,
    ) -> None:
        self.stream_idle_timeout = stream_idle_timeout
        self.max_body_bytes = max_body_bytes
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None

    def _sessions(self) -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
        # Created lazily inside the running loop, as aiohttp requires.
        if self._session is None or self._fresh is None:
            self._session = self._new_session(
                _Connector(limit=0, ttl_dns_cache=300, keepalive_timeout=KEEPALIVE_SECONDS)
            )
            self._fresh = self._new_session(aiohttp.TCPConnector(limit=0, force_close=True))
        return self._session, self._fresh

    def _new_session(self, connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            # Workers must not compress: it costs both sides CPU on loopback and LAN links.
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
        )

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> UpstreamResponse:
        pooled, fresh = self._sessions()
        sent = time.monotonic()
        try:
            resp = await pooled.request(
                method, url, headers=headers, data=body, allow_redirects=False
            )
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            stale = _reused.get() and time.monotonic() - sent < STALE_WITHIN
            if isinstance(exc, aiohttp.ClientConnectorError) or not stale:
                raise _translate(exc) from exc
            try:
                resp = await fresh.request(
                    method, url, headers=headers, data=body, allow_redirects=False
                )
            except Exception as again:
                raise _translate(again) from again
        except ValueError as exc:
            # aiohttp refuses to build the request (a header value it will not send): no worker
            # could take it; registrations are checked so that this does not happen.
            raise TransportError("connect", f"the request could not be sent: {exc}") from exc
        except Exception as exc:
            raise _translate(exc) from exc
        return _AiohttpResponse(resp, self.stream_idle_timeout, self.max_body_bytes)

    async def close(self) -> None:
        for session in (self._session, self._fresh):
            if session is not None:
                await session.close()
        self._session = self._fresh = None


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, asyncio.CancelledError):
        return exc
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return TransportError("connect", "timed out connecting to the worker")
        return TransportError("timeout", "the worker stopped sending (stream idle timeout)")
    # The messages reach clients: they say what happened, not where (no address, no URL).
    if isinstance(exc, aiohttp.ClientConnectorError):
        errno = exc.os_error.errno
        # The errno's own words: asyncio's strerror names the address ("Connect call failed
        # ('10.0.0.5', 8000)"), and clients get this message.
        reason = os.strerror(errno) if errno else type(exc.os_error).__name__
        return TransportError("connect", f"cannot connect to the worker: {reason}")
    if isinstance(exc, aiohttp.InvalidURL):
        return TransportError("connect", "the worker's URL is not valid")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return TransportError("reset", "the worker closed the connection")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TransportError("reset", "the worker's answer was cut off")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return TransportError("reset", f"connection to the worker failed ({type(exc).__name__})")
    return exc
