"""JSON replies (orjson), and the one place an exception becomes a reply."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import orjson
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from balancer.errors import BalancerError, PayloadTooLarge
from balancer.logging import get_logger
from balancer.types import ClientApi

log = get_logger("balancer.errors")

INTERNAL_ERROR = "internal error; see the balancer's log"


def json_response(
    data: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(data),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


class Reply(Protocol):
    """What an endpoint answers with: a starlette Response, or a StreamReply."""

    status_code: int

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...


class StreamReply:
    """A stream relayed as its chunks come.

    Starlette's StreamingResponse runs a task group and a disconnect listener for every stream,
    and a plain-function background task in a thread: together they cost more per stream than
    relaying its chunks. Here each chunk goes straight to `send`; a client that leaves is noticed
    by the Router's disconnect watch, which cancels the request and with it this loop; and the
    stream is closed inline when it ends, however it ends (its worker's slot given back).
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        media_type: str,
        headers: Mapping[str, str],
        status_code: int = 200,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.chunks = chunks
        self.status_code = status_code
        self.close = close
        self.raw_headers = [
            (b"content-type", media_type.encode("latin-1")),
            *(
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in headers.items()
            ),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            # Cut short (the client left, the server stops) or not: the stream's own cleanup
            # runs now, not whenever the generator is collected.
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()
            if self.close is not None:
                self.close()


def served_headers(worker_id: str, attempts: int) -> dict[str, str]:
    """Who served a forwarded request, after how many attempts."""
    return {"X-Balancer-Worker": worker_id, "X-Balancer-Attempts": str(attempts)}


def error_body(api: ClientApi, message: str, error_type: str, code: str | None) -> dict[str, Any]:
    """An error in the envelope of the API the client called."""
    if api == "openai":
        return {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return {"success": False, "msg": message}


def error_reply(api: ClientApi, exc: Exception) -> Response:
    """The reply to a request that raised `exc`: our errors say what they concern, a routing
    miss says what was asked, anything else is a bug of ours, logged with its traceback."""
    if isinstance(exc, BalancerError):
        if exc.status_code >= 500:
            log.warning(
                "request_failed",
                status=exc.status_code,
                error=exc.message,
                model=exc.model,
                worker=exc.worker,
            )
        headers = {}
        if exc.attempts:
            headers["X-Balancer-Attempts"] = str(exc.attempts)
            if exc.worker:
                headers["X-Balancer-Worker"] = exc.worker  # the last one tried
        if exc.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(exc.retry_after))
        if isinstance(exc, PayloadTooLarge):
            # The rest of the body stays unread: the connection cannot carry another request.
            headers["Connection"] = "close"
        body = error_body(api, exc.message, exc.openai_type, exc.openai_code)
        return json_response(body, exc.status_code, headers=headers or None)
    if isinstance(exc, HTTPException):
        body = error_body(api, str(exc.detail), "invalid_request_error", None)
        return json_response(body, exc.status_code, headers=dict(exc.headers or {}))
    log.error("unhandled_error", exc_info=exc)
    return json_response(error_body(api, INTERNAL_ERROR, "server_error", "internal_error"), 500)
