"""Relaying an OpenAI-compatible worker's answer to the client as it is, body and stream.

For a stream the first chunk is awaited inside the attempt, before the client has seen anything,
so a worker that refuses or fails before its first byte can still be swapped for another; after
it, a broken stream ends with an error event. On the way the relay watches for the first token
and the usage the worker reports, and writes them to the request's record.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import orjson

from balancer.errors import UpstreamError
from balancer.events import RequestRecord
from balancer.forwarding import sse
from balancer.forwarding.lease import Lease
from balancer.forwarding.openai_format import usage_counts
from balancer.forwarding.transport import Transport
from balancer.forwarding.upstream import (
    RETRYABLE_STATUS,
    openai_url,
    send,
    upstream_headers,
)
from balancer.logging import get_logger

log = get_logger("balancer.relay")

_TOKEN = re.compile(rb'"(?:content|text)":"[^"]')


@dataclass(slots=True)
class Relayed:
    """A worker's answer, to pass to the client as it is."""

    status: int
    content_type: str
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    # Frees the worker's slot and connection if the client left before the stream was read.
    close: Callable[[], None] | None = None


async def relay_openai(
    transport: Transport,
    lease: Lease,
    path: str,
    payload: bytes,
    *,
    stream: bool,
    strip_usage: bool = False,
) -> Relayed:
    """One attempt at an OpenAI-compatible worker, body passed through."""
    worker = lease.worker
    url = openai_url(worker, path)
    reply = await send(
        transport,
        worker,
        "POST",
        url,
        body=payload,
        headers=upstream_headers(worker, lease.record.request_id, "application/json"),
    )
    content_type = reply.headers.get("Content-Type", "application/json")
    if not stream or reply.status != 200:
        data = await reply.read()
        if reply.status in RETRYABLE_STATUS:
            raise reply.status_failure(data)
        # Other client errors (400, 401, 404, ...) are the upstream's word: relay them unchanged.
        if reply.status == 200 and b'"usage"' in data:
            _record_usage(lease.record, data)
        return Relayed(reply.status, content_type, body=data)
    chunks = reply.chunks()
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        reply.close()
        raise UpstreamError(
            f"worker {worker.id} ({url}) ended the stream before sending anything",
            model=worker.model,
            worker=worker.id,
            retryable=True,
            reason="reset",
        ) from None
    except BaseException:
        # A failure (raised on as it is: the failover decides) or a cancellation.
        reply.close()
        raise
    # The stream now belongs to the client: the lease is held until it ends.
    lease.succeeded()
    lease.detached = True

    def close() -> None:
        reply.close()
        lease.release()

    tap = StreamTap(strip_usage=strip_usage)
    return Relayed(
        200, content_type, stream=_relay_rest(first, chunks, close, lease, tap), close=close
    )


async def _relay_rest(
    first: bytes,
    chunks: AsyncIterator[bytes],
    close: Callable[[], None],
    lease: Lease,
    tap: StreamTap,
) -> AsyncIterator[bytes]:
    record = lease.record
    first_at = last_at = time.perf_counter()
    record.first_byte_at = first_at
    token_seen = False
    try:
        if tap.has_token(first):
            record.ttft, token_seen = first_at - record.started, True
        yield tap.feed(first)
        try:
            async for chunk in chunks:
                last_at = time.perf_counter()
                if not token_seen and tap.has_token(chunk):
                    record.ttft, token_seen = last_at - record.started, True
                out = tap.feed(chunk)
                if out:
                    yield out
            tail = tap.flush()
            if tail:
                yield tail
        except UpstreamError as exc:
            # Too late to fail over: the client has our headers. End with an error event
            # (and no [DONE]) so the openai SDK raises instead of returning a cut answer.
            worker = lease.worker
            log.warning("stream_broken", model=worker.model, worker=worker.id, error=exc.message)
            lease.failed(exc)
            yield sse.error_event(exc.message)
    finally:
        close()
        _record_stream_tokens(record, tap, first_at, last_at)


class StreamTap:
    """Fed every chunk of a stream; gives back the bytes to send on.

    Chunks pass through untouched (no copy, no parse) unless they carry a `usage` object, which
    only the last one or two of a stream do; the usage chunk we asked for on the client's behalf
    is taken out again when the client did not ask for it.
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
        if not data.endswith(sse.EVENT_ENDS):
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


def _record_usage(record: RequestRecord, body: bytes) -> None:
    try:
        counts = usage_counts(orjson.loads(body))
    except orjson.JSONDecodeError:
        return
    if counts is not None:
        record.tokens(*counts, estimated=False)


def _record_stream_tokens(
    record: RequestRecord, tap: StreamTap, first_at: float, last_at: float
) -> None:
    if tap.usage is not None:
        record.tokens(*tap.usage, estimated=False)
    elif tap.content_chunks:
        record.output_tokens, record.tokens_estimated = tap.content_chunks, True
    if last_at > first_at:
        record.generation_seconds = last_at - first_at
