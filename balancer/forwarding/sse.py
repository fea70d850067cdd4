"""Server-sent events as OpenAI streams use them: framing, in one place for every writer (the
relay, answers made for template workers, the fake worker)."""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
EVENT_ENDS = (b"\n\n", b"\r\n\r\n")
CONTENT_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""Sent with every stream: no cache, and no buffering by a proxy in front of us (nginx)."""


def event(data: bytes) -> bytes:
    """One `data:` event."""
    return b"data: " + data + b"\n\n"


def json_event(document: Any) -> bytes:
    return b"data: " + orjson.dumps(document) + b"\n\n"


def error_event(message: str, code: str = "upstream_error") -> bytes:
    """How a stream that cannot go on ends: the openai SDK raises it (there is no [DONE])."""
    return json_event({"error": {"message": message, "type": "server_error", "code": code}})
