"""Relaying an OpenAI-compatible worker's answer to the client as it is, body and stream.

For a stream the first chunk is awaited inside the attempt, before the client has seen anything,
so a worker that refuses or fails before its first byte can still be swapped for another; after
it, a broken stream ends with an error event. On the way the relay watches for the first token
and the usage the worker reports, and writes them to the request's record (estimates where the
worker reports no usage), and answers with the model name the client used.

Streams are of three kinds (`StreamEvents`): chat and completion chunks, the typed events of the
Responses API (its first token is the first `response.output_text.delta`, its usage is in
`response.completed`, and a break ends it with the API's own `error` event), and plain bytes
(speech audio), relayed untouched.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from typing import Literal

import orjson

from balancer.errors import UpstreamError
from balancer.events import RequestRecord
from balancer.forwarding import sse
from balancer.forwarding.lease import Lease
from balancer.forwarding.openai_format import estimated_usage, usage_counts
from balancer.forwarding.transport import Transport
from balancer.forwarding.upstream import (
    RETRYABLE_STATUS,
    openai_url,
    send,
    upstream_headers,
)
from balancer.logging import get_logger

log = get_logger("balancer.relay")

# What the relay looks for, in JSON as any worker spaces it: `"content":"x"` or `"content": "x"`.
_TOKEN = re.compile(rb'"(?:content|text)"\s*:\s*"[^"]')
"""A non-empty content or text: a token."""
_TYPED_TOKEN = re.compile(
    rb'"type"\s*:\s*"(?:response\.output_text|response\.refusal|transcript\.text)\.delta"'
)
"""A text delta of a stream of typed events (the Responses API, streamed transcriptions)."""

StreamEvents = Literal["chat", "typed", "bytes"]
"""What a stream carries: chunks with `choices` (chat and text completions), typed events
(`response.output_text.delta`, ...: the Responses API), or bytes that are no events at all
(speech audio), relayed as they come."""
_EVENT_ENDS = sse.EVENT_ENDS
_USAGE_KEY = b'"usage"'
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
"""A usage object, not the `"usage": null` some servers put on every chunk."""
_SOME_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*[^\s\]]')
_MODEL = re.compile(rb'"model"\s*:\s*"[^"\\]*(?:\\.[^"\\]*)*"')


@dataclass(slots=True)
class Relayed:
    """A worker's answer, to pass to the client as it is."""

    status: int
    content_type: str
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    head: bytes = b""
    """A stream's first chunk, as the worker sent it (where a response's id is)."""
    # Frees the worker's slot and connection if the client left before the stream was read.
    close: Callable[[], None] | None = None


async def relay_openai(
    transport: Transport,
    lease: Lease,
    path: str,
    payload: bytes,
    *,
    stream: bool,
    method: str = "POST",
    strip_usage: bool = False,
    model: str | None = None,
    content_type: str = "application/json",
    events: StreamEvents = "chat",
    estimate: bool = True,
    relayed_statuses: Collection[int] = (),
) -> Relayed:
    """One attempt at an OpenAI-compatible worker, body passed through; `model` is the name
    the client asked for, answered in place of the worker's own when the two differ.

    `estimate`: count tokens from the texts when the worker reports no usage (text endpoints
    only). `relayed_statuses`: statuses that are the worker's answer to this very request,
    relayed instead of tried elsewhere (a 404 for a stored response it does not have)."""
    worker = lease.worker
    rename = _model_value(model) if model and model != worker.spec.target_model else None
    url = openai_url(worker, path)
    reply = await send(
        transport,
        worker,
        method,
        url,
        # A GET or DELETE (a stored response) sends no body at all.
        body=payload if payload or method == "POST" else None,
        headers=upstream_headers(
            worker, lease.record.request_id, content_type if payload else None
        ),
    )
    answer_type = reply.headers.get("Content-Type", "application/json")
    if not stream or reply.status != 200:
        data = await reply.read()
        relayed = reply.status in relayed_statuses
        if not relayed and (reply.status in RETRYABLE_STATUS or not 200 <= reply.status < 600):
            raise reply.status_failure(data)
        # The caller's own mistakes (400, 422, ...) are the worker's word: relayed unchanged.
        if reply.status >= 300:
            lease.answered = False
        if reply.status == 200:
            _record_usage(lease.record, payload, data, estimate)
            if rename is not None and _is_json(answer_type):
                data = _MODEL.sub(rename, data)
        return Relayed(reply.status, answer_type, body=data)
    chunks = reply.chunks()
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        reply.close()
        raise UpstreamError(
            f"worker {worker.id} ended the stream before sending anything",
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

    if events == "bytes" and answer_type.startswith(sse.CONTENT_TYPE):
        events = "typed"  # a worker that answers with events after all (speech as SSE)
    if events == "bytes":
        stream_of = _relay_bytes(first, chunks, close, lease)
    else:
        tap = StreamTap(strip_usage=strip_usage, rename=rename, events=events)
        stream_of = _relay_rest(first, chunks, close, lease, tap, payload, estimate)
    return Relayed(200, answer_type, stream=stream_of, close=close, head=first)


def _is_json(content_type: str) -> bool:
    return "json" in content_type


async def _relay_bytes(
    first: bytes, chunks: AsyncIterator[bytes], close: Callable[[], None], lease: Lease
) -> AsyncIterator[bytes]:
    """A stream that is no events (audio): relayed as it comes. Broken off, it ends there:
    the client sees a cut body (the connection is dropped), as nothing can be added to audio."""
    record = lease.record
    record.first_byte_at = time.perf_counter()
    try:
        yield first
        async for chunk in chunks:
            yield chunk
    except UpstreamError as exc:
        worker = lease.worker
        log.warning("stream_broken", model=worker.model, worker=worker.id, error=exc.message)
        lease.failed(exc)
        raise
    finally:
        close()


async def _relay_rest(
    first: bytes,
    chunks: AsyncIterator[bytes],
    close: Callable[[], None],
    lease: Lease,
    tap: StreamTap,
    payload: bytes,
    estimate: bool = True,
) -> AsyncIterator[bytes]:
    record = lease.record
    first_at = last_at = time.perf_counter()
    record.first_byte_at = first_at
    try:
        out = tap.feed(first)
        if tap.content_chunks:
            record.ttft = first_at - record.started
        if out:
            yield out
        try:
            async for chunk in chunks:
                last_at = time.perf_counter()
                out = tap.feed(chunk)
                if out:
                    if record.ttft is None and tap.content_chunks:
                        record.ttft = last_at - record.started
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
            if tap.typed:
                yield sse.typed_error_event(exc.message)
            else:
                yield sse.error_event(exc.message)
    finally:
        close()
        _record_stream_tokens(record, tap, payload, first_at, last_at, estimate)


class StreamTap:
    """Fed every chunk of a stream; gives back the bytes to send on: the whole events the chunk
    completes. An unfinished last event is held until its end arrives (never more than that
    one event: a client cannot use it before either), so every event is read whole.

    Events pass through untouched (no copy, no parse) unless they carry a `usage` object, which
    only the last one or two of a stream do (a `"usage": null` on every chunk costs one more
    search); the usage-only event we asked for on the client's behalf is taken out again when
    the client did not ask for it. With `rename`, every `"model"` names what the client asked for.
    """

    __slots__ = (
        "_held",
        "_rename",
        "_token",
        "_usage_event",
        "content_chunks",
        "strip_usage",
        "typed",
    )

    def __init__(
        self, *, strip_usage: bool, rename: bytes | None = None, events: StreamEvents = "chat"
    ) -> None:
        self.strip_usage = strip_usage
        self.typed = events == "typed"
        self._token = _TYPED_TOKEN if self.typed else _TOKEN
        self.content_chunks = 0
        """Events with a token so far: the estimate of output tokens without usage."""
        self._rename = rename
        self._held = b""
        self._usage_event = b""
        """The last event with a usage object: read when asked for, as a worker may send one
        with every chunk and only the last counts."""

    @staticmethod
    def has_token(chunk: bytes) -> bool:
        return _TOKEN.search(chunk) is not None

    @property
    def usage(self) -> tuple[int, int] | None:
        """(prompt_tokens, completion_tokens) from the worker's last usage, if it sent any."""
        document = sse.event_json(self._usage_event) if self._usage_event else None
        return usage_counts(document)

    def feed(self, chunk: bytes) -> bytes:
        if self._held or not chunk.endswith(_EVENT_ENDS):
            chunk = self._whole_events(chunk)
            if not chunk:
                return b""
        if _USAGE_KEY in chunk and _USAGE_OBJECT.search(chunk) is not None:
            chunk = self._take_usage(chunk)
        self.content_chunks += len(self._token.findall(chunk))
        if self._rename is None:
            return chunk
        return _MODEL.sub(self._rename, chunk)

    def _whole_events(self, chunk: bytes) -> bytes:
        """The whole events that what is held and `chunk` make; the unfinished rest is held."""
        held = self._held
        data = held + chunk
        # Nothing held ends an event: an end in `data` begins at most 2 bytes before the join
        # (after a held \r\n\r).
        whole = sse.whole_events_length(data, max(0, len(held) - 2))
        self._held = data[whole:]
        return data[:whole]

    def flush(self) -> bytes:
        """What is held when the stream ends: an event never finished, passed on as it is
        (a client drops it)."""
        held, self._held = self._held, b""
        return held

    def _take_usage(self, events: bytes) -> bytes:
        kept = []
        for event in sse.split_events(events):
            if _USAGE_OBJECT.search(event) is None:
                kept.append(event)
                continue
            if _SOME_CHOICES.search(event) is not None:
                # Usage beside content (a server may send it on every chunk): the client's,
                # whoever asked; only the last one is read, at the end.
                self._usage_event = event
                kept.append(event)
                continue
            if usage_counts(sse.event_json(event)) is None:
                kept.append(event)
                continue
            self._usage_event = event
            if not self.strip_usage:
                kept.append(event)
            # else: the usage-only event we asked for; the client did not
        return b"".join(kept)


def _model_value(model: str) -> bytes:
    """What `_MODEL` is replaced with: the client's name, its backslashes doubled for `re`."""
    return b'"model":' + orjson.dumps(model).replace(b"\\", b"\\\\")


def _record_usage(record: RequestRecord, payload: bytes, body: bytes, estimate: bool) -> None:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    counts = usage_counts(answer)
    if counts is not None:
        record.tokens(*counts, estimated=False)
        return
    if not estimate:
        return
    # No usage: estimated, from the request too (read again only here).
    try:
        request = orjson.loads(payload)
    except orjson.JSONDecodeError:
        request = None
    record.tokens(*estimated_usage(request, answer), estimated=True)


def _record_stream_tokens(
    record: RequestRecord,
    tap: StreamTap,
    payload: bytes,
    first_at: float,
    last_at: float,
    estimate: bool = True,
) -> None:
    usage = tap.usage
    if usage is not None:
        record.tokens(*usage, estimated=False)
    elif estimate or tap.content_chunks:
        # No usage: a content event is about a token; the prompt at four characters a token.
        try:
            prompt_tokens, _ = estimated_usage(orjson.loads(payload), None)
        except orjson.JSONDecodeError:
            prompt_tokens = 0
        record.tokens(prompt_tokens, tap.content_chunks, estimated=True)
    if last_at > first_at:
        record.generation_seconds = last_at - first_at
