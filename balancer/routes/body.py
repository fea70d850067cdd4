"""Reading a request body: one JSON object, and the fields every API checks the same way."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request

from balancer.errors import BadRequest, PayloadTooLarge

MAX_DEPTH = 128
"""Deepest nesting of arrays and objects a body may have. orjson parses up to 1024 levels, but
it writes only 254 and the store's json module recurses on the C stack: a body that parses must
not fail later, halfway through forwarding or saving it."""


async def read_json_object(request: Request, limit: int) -> tuple[bytes, dict[str, Any]]:
    """The raw body (at most `limit` bytes) and its parse, which must be a JSON object."""
    body = await read_body(request, limit)
    if not body:
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson takes UTF-8 only: other encodings, lone surrogates and a BOM land here too.
        raise BadRequest(f"the request body is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    # Every level opens with a bracket: counting them (at C speed) clears all but the few
    # bodies that have more than MAX_DEPTH of them, and only those are walked.
    if body.count(b"{") + body.count(b"[") > MAX_DEPTH and nests_deeper(data, MAX_DEPTH):
        raise BadRequest(f"the request body nests arrays and objects deeper than {MAX_DEPTH}")
    return body, data


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, read as it arrives; a 413 as soon as it is known to exceed `limit`,
    whether its Content-Length said so or its chunks add up to more."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        # Refuse before reading: a body that large would only be held in memory to be dropped.
        raise _too_large(limit)
    chunks = []
    size = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            # What is held is at most `limit` bytes and this chunk; the rest is never read.
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is larger than {limit} bytes (BALANCER_MAX_BODY_BYTES)"
    )


def nests_deeper(data: Any, depth: int) -> bool:
    """Whether arrays and objects in `data` nest more than `depth` levels (iteratively: a deep
    document must not exhaust the interpreter's stack)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, level = stack.pop()
        if level > depth:
            return True
        for child in value.values() if isinstance(value, dict) else value:
            if isinstance(child, dict | list):
                stack.append((child, level + 1))
    return False


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
