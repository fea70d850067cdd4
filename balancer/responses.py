"""JSON replies (orjson), and the one place an exception becomes a reply."""

from __future__ import annotations

import math
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.responses import Response

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
