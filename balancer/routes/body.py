"""Reading a request body: one JSON object, and the fields every API checks the same way."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from balancer.errors import BadRequest, PayloadTooLarge

MAX_BODY_BYTES = 32 * 1024 * 1024


async def read_json_object(request: Request) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its parse, which must be a JSON object."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        # Refuse before reading: a body that large would only be held in memory to be dropped.
        raise PayloadTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")
    if not body:
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return body, data


def optional_number(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{key} must be a number, got {value!r}")
    return float(value) if isinstance(value, float) else value


def required_string(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{key} is required and must be a non-empty string")
    return value
