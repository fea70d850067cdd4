"""Server-sent events as OpenAI streams use them: framing, in one place for every writer (the
relay, answers made for template workers, the fake worker), and reading them as the spec says
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
lines end with \\n, \\r\\n or \\r, a blank line ends an event, `data:` may or may not be followed
by a space. Workers write every variant: `data:{...}`, sse-starlette's \\r\\n\\r\\n."""

from __future__ import annotations

import re
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
EVENT_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")
"""How a chunk that ends with a whole event usually ends: a cheap first test."""
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


def typed_error_event(message: str, code: str = "upstream_error") -> bytes:
    """How a stream of typed events (the Responses API) that cannot go on ends: the API's own
    `error` event, with an `error` object too, which the openai SDK raises."""
    error = {"message": message, "type": "server_error", "code": code}
    document = {"type": "error", "code": code, "message": message, "param": None, "error": error}
    return b"event: error\n" + json_event(document)


# A line end is \r\n, or a lone \r or \n; two in a row end an event.
_LINE_END = rb"(?:\r\n|\r(?!\n)|\n)"
_EVENT_END = re.compile(_LINE_END + _LINE_END)
_LINES = re.compile(rb"\r\n|\r|\n")
_CR = 13


def whole_events_length(data: bytes, start: int = 0) -> int:
    """How many leading bytes of `data` are whole events (0 if no event ends in it), looking
    for event ends that begin at `start` or later."""
    end = len(data)
    if data.endswith(b"\n\r"):
        end -= 1  # \r\n\r, its \n still to come (CRLF framing): not an end yet
    # Every event end holds one of these pairs, and each of them is in an event end: the last
    # one found is in the last event end (three searches in C, no regex, no Python loop).
    last = max(
        data.rfind(b"\n\n", start, end),
        data.rfind(b"\n\r", start, end),
        data.rfind(b"\r\r", start, end),
    )
    if last < 0:
        return 0
    end = last + 2
    if data[last + 1] == _CR and data[end : end + 1] == b"\n":
        end += 1
    return end


def split_events(data: bytes) -> list[bytes]:
    """`data` cut after the end of each event, ends kept: the pieces join back to `data`."""
    pieces = []
    start = 0
    for match in _EVENT_END.finditer(data):
        pieces.append(data[start : match.end()])
        start = match.end()
    if start < len(data):
        pieces.append(data[start:])
    return pieces


def event_data(event: bytes) -> bytes | None:
    """An event's data as a client reads it (its `data` fields joined by \\n), None without."""
    values = []
    for line in _LINES.split(event):
        name, _, value = line.partition(b":")
        if name == b"data":
            values.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(values) if values else None


def event_json(event: bytes) -> object:
    """An event's data as JSON, None without data or when it is not JSON (`[DONE]`)."""
    data = event_data(event)
    if data is None:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
