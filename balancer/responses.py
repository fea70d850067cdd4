"""JSON replies (orjson) and the one handler that turns our errors into them."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from balancer.errors import BalancerError
from balancer.logging import get_logger
from balancer.types import ClientApi

log = get_logger("balancer.errors")


def json_response(
    data: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(data),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


def client_api(path: str) -> ClientApi:
    return "openai" if path.startswith("/v1/") else "operategpt"


def error_body(api: ClientApi, message: str, error_type: str, code: str | None) -> dict[str, Any]:
    if api == "openai":
        return {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return {"success": False, "msg": message}


async def handle_balancer_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BalancerError)
    if exc.status_code >= 500:
        log.warning(
            "request_failed",
            status=exc.status_code,
            error=exc.message,
            model=exc.model,
            worker=exc.worker,
        )
    body = error_body(client_api(request.url.path), exc.message, exc.openai_type, exc.openai_code)
    headers = {}
    if exc.attempts:
        headers["X-Balancer-Attempts"] = str(exc.attempts)
        if exc.worker:
            headers["X-Balancer-Worker"] = exc.worker  # the last one tried
    return json_response(body, exc.status_code, headers=headers or None)


async def handle_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {
        404: f"no route {request.url.path}",
        405: f"method {request.method} not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    body = error_body(client_api(request.url.path), message, "invalid_request_error", None)
    return json_response(body, exc.status_code, headers=dict(exc.headers or {}))


async def handle_unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled_error", path=request.url.path)
    body = error_body(
        client_api(request.url.path),
        "internal error; see the balancer's log",
        "server_error",
        "internal_error",
    )
    return json_response(body, 500)
