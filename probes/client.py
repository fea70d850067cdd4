"""How probes reach workers: a small interface, and its real implementation on an aiohttp session
of their own (aiohttp, as forwarding: a tenth of httpx's CPU per request, which matters for a
thousand workers probed every few seconds).

A probe has no time limits of its own here: the prober gives each probe one deadline and cancels
whatever is still running at it (connecting, waiting, or reading a body trickled byte by byte).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import aiohttp


class Unreachable(Exception):
    """No answer came: the connection was refused or broken, or the URL is unusable."""


class TooLarge(Unreachable):
    """The answer was larger than the reader's limit."""


class ProbeClient(Protocol):
    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None
    ) -> int:
        """Send a request, read the whole answer and return its status; raises Unreachable."""
        ...

    async def get(self, url: str, *, headers: Mapping[str, str], limit: int) -> tuple[int, bytes]:
        """GET `url`: its status and body; raises Unreachable (TooLarge for a body over `limit`
        bytes)."""
        ...

    async def aclose(self) -> None: ...


class AiohttpProbeClient:
    """All probes share one session, apart from the forwarding one: probes of slow or
    unreachable workers never hold connections that requests, or other workers' probes, wait for
    (the pool has no limit)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise Unreachable("the balancer is stopping")
        # Created lazily inside the running loop, as aiohttp requires.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                # No timeouts of aiohttp's own (its default would cut a probe at 300 s): the
                # prober's deadline bounds the whole probe.
                timeout=aiohttp.ClientTimeout(total=None),
                # Workers must not compress what a probe throws away.
                skip_auto_headers=("Accept-Encoding",),
            )
        return self._session

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None
    ) -> int:
        # A GET on a kept-alive connection the worker has just closed is sent again on a fresh
        # one by aiohttp itself (RFC 9112 §9.3.1), so an idle timeout is not a failed probe.
        try:
            response = await self._get_session().request(
                method, url, headers=headers, data=body, allow_redirects=False
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise Unreachable(_describe(exc)) from exc
        try:
            # Read to the end, so the connection can be kept for the next probe; a cancellation
            # (the deadline) lands here too, and release() then drops the connection.
            await response.read()
        except (aiohttp.ClientError, OSError) as exc:
            raise Unreachable(_describe(exc)) from exc
        finally:
            response.release()
        return response.status

    async def get(self, url: str, *, headers: Mapping[str, str], limit: int) -> tuple[int, bytes]:
        try:
            response = await self._get_session().get(url, headers=headers, allow_redirects=False)
        except (aiohttp.ClientError, OSError) as exc:
            raise Unreachable(_describe(exc)) from exc
        body = bytearray()
        try:
            async for chunk in response.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > limit:
                    # Unread, the connection is not kept: release() drops it.
                    raise TooLarge(f"answer larger than {limit} bytes")
        except (aiohttp.ClientError, OSError) as exc:
            raise Unreachable(_describe(exc)) from exc
        finally:
            response.release()
        return response.status, bytes(body)

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error}"
    return f"{type(exc).__name__}: {exc}"
