"""One request to one worker: what goes on the wire, and what its answer means.

This is the only place a transport failure becomes an `UpstreamError` naming the worker, and
where a worker's HTTP status is judged (retry elsewhere, or relay as the worker's own word).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Mapping

from balancer.errors import UpstreamError, UpstreamTimeout
from balancer.forwarding.transport import Transport, TransportError, UpstreamResponse
from balancer.registry.models import Worker

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 300.0


def openai_url(worker: Worker, path: str) -> str:
    """`path` (e.g. /chat/completions) under an OpenAI worker's base URL."""
    return worker.spec.req_url_template.rstrip("/") + path


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

    __slots__ = ("_response", "status", "url", "worker")

    def __init__(self, worker: Worker, url: str, response: UpstreamResponse) -> None:
        self.worker = worker
        self.url = url
        """The URL errors name: a template worker's template, never the prompt filled into it."""
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
            raise self.failure(exc) from None
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
                raise self.failure(exc) from None
            raise UpstreamError(
                f"worker {self.worker.id} ({self.url}) broke off the stream: {exc.message}",
                model=self.worker.model,
                worker=self.worker.id,
                reason=exc.kind,
            ) from None

    def close(self) -> None:
        self._response.close()

    def failure(self, exc: TransportError) -> UpstreamError:
        return transport_failure(self.worker, self.url, exc)

    def status_failure(self, body: bytes) -> UpstreamError:
        """The error a non-2xx answer is: retryable for 429 and 5xx, the worker's word else."""
        status = self.status
        snippet = body[:300].decode("utf-8", "replace").strip()
        retry_after = parse_retry_after(self.headers.get("Retry-After")) if status == 429 else None
        return UpstreamError(
            f"worker {self.worker.id} ({self.url}) answered HTTP {status}"
            + (f": {snippet}" if snippet else ""),
            model=self.worker.model,
            worker=self.worker.id,
            retryable=status in RETRYABLE_STATUS,
            upstream_status=status,
            reason=f"http_{status}" if status in RETRYABLE_STATUS else "http_4xx",
            retry_after=retry_after,
        )


async def send(
    transport: Transport,
    worker: Worker,
    method: str,
    url: str,
    *,
    body: bytes | None,
    headers: Mapping[str, str],
    shown_url: str | None = None,
) -> UpstreamReply:
    """Send a request to a worker; return once its response headers arrived.

    Errors name `shown_url` (default: `url`).
    """
    shown = shown_url or url
    try:
        response = await transport.request(
            method, url, headers=headers, body=body, timeout=worker.spec.timeout
        )
    except TransportError as exc:
        raise transport_failure(worker, shown, exc) from None
    return UpstreamReply(worker, shown, response)


def transport_failure(worker: Worker, url: str, exc: TransportError) -> UpstreamError:
    cls = UpstreamTimeout if exc.kind == "timeout" else UpstreamError
    return cls(
        f"worker {worker.id} ({url}): {exc.message}",
        model=worker.model,
        worker=worker.id,
        retryable=True,
        reason=exc.kind,
    )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP date), capped at 5 minutes."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER) or None
