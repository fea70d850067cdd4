"""One request to one worker: what goes on the wire, and what its answer means.

This is the only place a transport failure becomes an `UpstreamError` naming the worker, and
where a worker's HTTP status is judged. Errors name the worker by its id, never by its URL:
they reach clients, and a URL may carry credentials.

- 2xx: an answer, relayed;
- 429 ("slow down"): tried elsewhere, `Retry-After` keeps the worker out, it is not charged;
- 401, 403, 404, 405, 408, 3xx and every 5xx (the worker cannot serve): tried elsewhere, and the
  worker is charged (its latency estimate and health, like a connect error);
- 400, 413, 422 and every other 4xx (the caller's own mistake): relayed unchanged, not charged.

A whole answer larger than BALANCER_MAX_UPSTREAM_BODY_BYTES (the transport stops reading it) is
tried elsewhere and charged, as a broken answer is; a stream is not bounded.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import AsyncIterator, Mapping

from balancer.errors import UpstreamError, UpstreamTimeout
from balancer.forwarding.transport import Transport, TransportError, UpstreamResponse
from balancer.logging import REDACTED, redact_text
from balancer.registry.models import Worker

BACK_OFF = 429
CANNOT_SERVE = frozenset({401, 403, 404, 405, 408, *range(300, 400), *range(500, 600)})
RETRYABLE_STATUS = CANNOT_SERVE | {BACK_OFF}
"""Statuses that send the request to another worker."""


def openai_url(worker: Worker, path: str) -> str:
    """`path` (e.g. /chat/completions) under an OpenAI worker's base URL; a path of the API's
    next version (/v2/rerank) beside the base URL's /v1, as vLLM serves them."""
    base = worker.spec.req_url_template.rstrip("/")
    if path.startswith("/v2/") and base.endswith("/v1"):
        return base[:-3] + path
    return base + path


def upstream_headers(
    worker: Worker, request_id: str | None, content_type: str | None
) -> dict[str, str]:
    headers = {"Content-Type": content_type} if content_type else {}
    if worker.spec.header:
        headers.update(worker.spec.header)
    if request_id:
        headers["X-Request-ID"] = request_id
    return headers


class UpstreamReply:
    """A worker's answer, from its headers on; every failure is an UpstreamError."""

    __slots__ = ("_response", "status", "worker")

    def __init__(self, worker: Worker, response: UpstreamResponse) -> None:
        self.worker = worker
        self._response = response
        self.status = response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def read(self) -> bytes:
        """The whole body; the connection is given back either way."""
        try:
            return await self._response.read()
        except TransportError as exc:
            raise transport_failure(self.worker, exc) from None
        finally:
            self._response.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        started = False
        try:
            async for chunk in self._response.chunks():
                started = True
                yield chunk
        except TransportError as exc:
            if not started:
                raise transport_failure(self.worker, exc) from None
            raise UpstreamError(
                f"worker {self.worker.id} broke off the stream: {exc.message}",
                model=self.worker.model,
                worker=self.worker.id,
                reason=exc.kind,
            ) from None

    def close(self) -> None:
        self._response.close()

    def status_failure(self, body: bytes) -> UpstreamError:
        """The error a non-2xx answer is (see the table at the top)."""
        status = self.status
        snippet = _said(self.worker, body)
        # A status no HTTP server sends (600 and up; aiohttp lets them through) is a broken
        # answer: another worker may do better, and it could not be relayed anyway.
        retryable = status in RETRYABLE_STATUS or not 200 <= status < 600
        retry_after = None
        if status in (BACK_OFF, 503):
            retry_after = parse_retry_after(self.headers.get("Retry-After"))
        return UpstreamError(
            f"worker {self.worker.id} answered HTTP {status}" + (f": {snippet}" if snippet else ""),
            model=self.worker.model,
            worker=self.worker.id,
            retryable=retryable,
            upstream_status=status,
            reason=_reason(status, retryable),
            retry_after=retry_after,
        )


def _reason(status: int, retryable: bool) -> str:
    if not 200 <= status < 600:
        return "invalid_response"
    return f"http_{status}" if retryable else "http_4xx"


def _said(worker: Worker, body: bytes) -> str:
    """What a worker's error body says, for a message clients get: its first 300 characters,
    without the worker's own secrets (some servers echo the key they were sent: "Received API
    Key = sk-...") or URLs' credentials."""
    text = body[:300].decode("utf-8", "replace").strip()
    for value in (worker.spec.header or {}).values():
        for secret in {value, value.partition(" ")[2]}:  # "Bearer sk-..." and "sk-..."
            if len(secret) >= 8:
                text = text.replace(secret, REDACTED)
    return redact_text(text)


async def send(
    transport: Transport,
    worker: Worker,
    method: str,
    url: str,
    *,
    body: bytes | None,
    headers: Mapping[str, str],
) -> UpstreamReply:
    """Send a request to a worker; return once its response headers arrived."""
    try:
        response = await transport.request(method, url, headers=headers, body=body)
    except TransportError as exc:
        raise transport_failure(worker, exc) from None
    return UpstreamReply(worker, response)


def transport_failure(worker: Worker, exc: TransportError) -> UpstreamError:
    cls = UpstreamTimeout if exc.kind == "timeout" else UpstreamError
    return cls(
        f"worker {worker.id}: {exc.message}",
        model=worker.model,
        worker=worker.id,
        retryable=True,
        reason=exc.kind,
    )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delay-seconds or an HTTP-date (RFC 9110 10.2.3).

    Anything else (`nan`, `inf`, a negative number, garbage) is no Retry-After at all.
    """
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = max(when.timestamp() - time.time(), 0.0)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds or None
