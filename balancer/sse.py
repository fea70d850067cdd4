"""Watching an SSE stream go by: tokens, the first token's time, and the usage chunk that we
asked for on the client's behalf (removed again when the client did not ask for it)."""

from __future__ import annotations

import re

import orjson

from balancer.accounting import usage_counts

_TOKEN = re.compile(rb'"(?:content|text)":"[^"]')
_EVENT_END = (b"\n\n", b"\r\n\r\n")


class StreamTap:
    """Fed every chunk of a stream; gives back the bytes to send on.

    Chunks pass through untouched (no copy, no parse) unless they carry a `usage` object, which
    only the last one or two of a stream do.
    """

    __slots__ = ("_held", "content_chunks", "strip_usage", "usage")

    def __init__(self, *, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.usage: tuple[int, int] | None = None
        self.content_chunks = 0
        self._held = b""

    @staticmethod
    def has_token(chunk: bytes) -> bool:
        return _TOKEN.search(chunk) is not None

    def feed(self, chunk: bytes) -> bytes:
        self.content_chunks += len(_TOKEN.findall(chunk))
        if b'"usage"' not in chunk and not self._held:
            return chunk
        data = self._held + chunk
        if not data.endswith(_EVENT_END):
            self._held = data  # a usage event cut in two: wait for its end
            return b""
        self._held = b""
        return self._scan(data)

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held

    def _scan(self, data: bytes) -> bytes:
        kept = []
        for event in data.split(b"\n\n"):
            if b'"usage"' in event and event.startswith(b"data: {"):
                try:
                    document = orjson.loads(event[6:])
                except orjson.JSONDecodeError:
                    kept.append(event)
                    continue
                counts = usage_counts(document)
                if counts is not None:
                    self.usage = counts
                    if self.strip_usage and not document.get("choices"):
                        continue  # the usage-only chunk we asked for; the client did not
            kept.append(event)
        return b"\n\n".join(kept)
