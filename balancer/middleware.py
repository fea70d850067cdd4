"""Pure ASGI middleware: a request id for every call, and one log line when it ends."""

from __future__ import annotations

import asyncio
import os
import time
from contextvars import ContextVar

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from balancer.logging import get_logger

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
"""The request's id (the client's X-Request-ID, or ours): sent on to workers, in every log line."""
log = get_logger("balancer.access")

_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
CLIENT_CLOSED_REQUEST = 499
"""The status logged and counted for a client that left before its answer (nginx's)."""


def _valid_request_id(raw: bytes) -> str | None:
    if 0 < len(raw) <= 128 and all(33 <= b < 127 for b in raw):
        return raw.decode("ascii")
    return None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = _valid_request_id(value)
                break
        if request_id is None:
            request_id = os.urandom(16).hex()  # as random as uuid4().hex, at a third of the cost
        request_id_var.set(request_id)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status = 500  # what the server answers if the app fails before it does
        started = time.perf_counter()
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            if status == 500:
                status = CLIENT_CLOSED_REQUEST  # gone before an answer was ready
            raise
        finally:
            # A cancelled request (client gone) still gets its line, with the status it had.
            path = scope["path"]
            if path not in _QUIET_PATHS:
                log.info(
                    "request",
                    method=scope["method"],
                    path=path,
                    status=status,
                    latency_ms=round((time.perf_counter() - started) * 1000.0, 3),
                )
