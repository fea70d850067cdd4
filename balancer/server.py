"""uvicorn servers with the signal handling this service needs, and the HTTP protocol they speak."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Generator
from typing import Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class Server(uvicorn.Server):
    """uvicorn's server that, after a SIGTERM drain, exits 0 instead of re-raising the signal."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


class EmbeddedServer(uvicorn.Server):
    """A server run inside another's event loop (demo workers): the outer one owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind_loopback(port: int = 0, host: str = "127.0.0.1") -> socket.socket:
    """A listening socket; port 0 lets the kernel choose a free one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, sending a response's headers with the start of its body.

    uvicorn writes the headers as soon as `http.response.start` is sent and the body apart, so a
    plain answer cost two send(2) calls and two packets; together they cost one, which saves
    about a tenth of the balancer's CPU per request (`bench.compare`). Only the headers wait,
    and only until the current step of the event loop is over: a stream's chunks go out as they
    come."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Duck-typed (uvloop's transports are not asyncio.Transport subclasses either):
        # everything but writing and closing goes to the real transport.
        self._coalescing = CoalescingTransport(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(cast(asyncio.Transport, self._coalescing))

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._coalescing.hold_next_write()


class CoalescingTransport:
    """A transport that can hold one write until the current step of the loop is over, and
    sends whatever was written meanwhile with it."""

    __slots__ = ("_hold", "_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._hold = False
        self._pending: list[bytes] | None = None

    def hold_next_write(self) -> None:
        self._hold = True

    def write(self, data: bytes) -> None:
        if self._pending is not None:
            self._pending.append(data)
        elif self._hold:
            self._hold = False
            self._pending = [data]
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        pending = sum(map(len, self._pending)) if self._pending else 0
        return pending + self._transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
