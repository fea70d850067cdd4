"""How bytes reach workers: a small interface, and its real implementation on one aiohttp session.

aiohttp is used on the forwarding path because, measured per proxied request, it costs a fraction of
httpx's default transport (whose pool walks every connection on each request).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Literal, Protocol

import aiohttp

FailureKind = Literal["connect", "timeout", "reset"]


class TransportError(Exception):
    """The worker could not be reached or stopped answering; always worth trying elsewhere."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class UpstreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes:
        """The whole body; raises TransportError."""
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
        timeout: float,
    ) -> UpstreamResponse:
        """Send a request and return once the response headers arrived.

        `timeout` bounds the connect, the wait for the first byte and every later gap between
        chunks, so a worker that answers and then stalls cannot hang a client forever.
        """
        ...

    async def close(self) -> None: ...


class _AiohttpResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except Exception as exc:
            raise _translate(exc) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except Exception as exc:
            raise _translate(exc) from exc

    def close(self) -> None:
        self._resp.release()


class AiohttpTransport:
    """All requests to workers share one session: pooled keep-alive connections per worker."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        # One ClientTimeout per distinct worker timeout, not one per request.
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily inside the running loop, as aiohttp requires.
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                # Workers must not compress: it costs both sides CPU on loopback and LAN links.
                skip_auto_headers=("Accept-Encoding", "User-Agent"),
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
    ) -> UpstreamResponse:
        client_timeout = self._timeouts.get(timeout)
        if client_timeout is None:
            client_timeout = self._timeouts[timeout] = aiohttp.ClientTimeout(
                total=None, sock_connect=timeout, sock_read=timeout
            )
        try:
            resp = await self._get_session().request(
                method,
                url,
                headers=headers,
                data=body,
                timeout=client_timeout,
                allow_redirects=False,
            )
        except Exception as exc:
            raise _translate(exc) from exc
        return _AiohttpResponse(resp)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, asyncio.CancelledError):
        return exc
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return TransportError("timeout", "timed out waiting for the worker")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return TransportError("connect", f"cannot connect to the worker: {exc.os_error}")
    if isinstance(exc, aiohttp.InvalidURL):
        return TransportError("connect", f"invalid worker URL: {exc}")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return TransportError("reset", f"connection to the worker failed: {exc!r}")
    return exc
