"""What one attempt sends to one worker, and how its answer is read. No retry logic here."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from balancer.accounting import record_tokens, usage_counts
from balancer.errors import UpstreamError, UpstreamTimeout
from balancer.openai_format import estimate_tokens
from balancer.registry.models import Worker
from balancer.templating import (
    DEFAULT_TEMPERATURE,
    MODEL_NAME,
    MODEL_TEMPERATURE,
    USER_PROMPT,
    ExtractError,
    as_result_text,
    extract,
    fill,
    fill_url,
)
from balancer.transport import Transport, TransportError, UpstreamResponse

JSON_HEADERS = {"Content-Type": "application/json"}
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_CHAT_CONTENT_PATH = ("choices", 0, "message", "content")


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


def transport_failure(worker: Worker, url: str, exc: TransportError) -> UpstreamError:
    cls = UpstreamTimeout if exc.kind == "timeout" else UpstreamError
    return cls(
        f"worker {worker.id} ({url}): {exc.message}",
        model=worker.model,
        worker=worker.id,
        retryable=True,
        reason=exc.kind,
    )


def status_failure(
    worker: Worker, url: str, status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> UpstreamError:
    snippet = body[:300].decode("utf-8", "replace").strip()
    retry_after = parse_retry_after(headers.get("Retry-After")) if headers else None
    return UpstreamError(
        f"worker {worker.id} ({url}) answered HTTP {status}" + (f": {snippet}" if snippet else ""),
        model=worker.model,
        worker=worker.id,
        retryable=status in RETRYABLE_STATUS,
        upstream_status=status,
        reason=f"http_{status}" if status in RETRYABLE_STATUS else "http_4xx",
        retry_after=retry_after if status == 429 else None,
    )


MAX_RETRY_AFTER = 300.0


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


async def send(
    transport: Transport,
    worker: Worker,
    method: str,
    url: str,
    *,
    body: bytes | None,
    headers: dict[str, str],
) -> UpstreamResponse:
    try:
        return await transport.request(
            method, url, headers=headers, body=body, timeout=worker.spec.timeout
        )
    except TransportError as exc:
        raise transport_failure(worker, url, exc) from None


async def read_all(worker: Worker, url: str, resp: UpstreamResponse) -> bytes:
    try:
        return await resp.read()
    except TransportError as exc:
        raise transport_failure(worker, url, exc) from None
    finally:
        resp.close()


async def complete_text(
    transport: Transport,
    worker: Worker,
    prompt: str,
    temperature: float | None,
    request_id: str | None,
) -> str:
    """One prompt in, the worker's answer text out, for either kind of worker.

    Tokens are credited to the call under way: the worker's `usage` where it reports one, an
    estimate otherwise.
    """
    if worker.spec.api == "openai":
        return await _complete_text_openai(transport, worker, prompt, temperature, request_id)
    text = await _complete_text_template(transport, worker, prompt, temperature, request_id)
    record_tokens(estimate_tokens(prompt), estimate_tokens(text), estimated=True)
    return text


@dataclass(frozen=True, slots=True)
class TemplateRequest:
    method: str
    url: str
    body: bytes | None
    content_type: str | None


def template_request(worker: Worker, prompt: str, temperature: float | None) -> TemplateRequest:
    """The request a template worker gets for a prompt: its templates filled afresh."""
    spec = worker.spec
    values: dict[str, Any] = {
        USER_PROMPT: prompt,
        MODEL_NAME: spec.target_model,
        MODEL_TEMPERATURE: DEFAULT_TEMPERATURE if temperature is None else temperature,
    }
    url = fill_url(spec.req_url_template, values)
    if spec.req_type == "GET" or spec.body is None:
        return TemplateRequest(spec.req_type, url, None, None)
    filled = fill(spec.body, values)
    if isinstance(filled, str):
        return TemplateRequest(spec.req_type, url, filled.encode(), "text/plain; charset=utf-8")
    return TemplateRequest(spec.req_type, url, orjson.dumps(filled), "application/json")


async def _complete_text_template(
    transport: Transport,
    worker: Worker,
    prompt: str,
    temperature: float | None,
    request_id: str | None,
) -> str:
    spec = worker.spec
    request = template_request(worker, prompt, temperature)
    resp = await send(
        transport,
        worker,
        request.method,
        request.url,
        body=request.body,
        headers=upstream_headers(worker, request_id, request.content_type),
    )
    status = resp.status
    data = await read_all(worker, spec.req_url_template, resp)
    if not 200 <= status < 300:
        raise status_failure(worker, spec.req_url_template, status, data, resp.headers)
    if worker.extract is None:
        return data.decode("utf-8", "replace")
    source = f"worker {worker.id} ({spec.req_url_template})"
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError(
            f"{source} returned a body that is not JSON, so response_extract "
            f"{spec.response_extract!r} cannot be applied",
            model=worker.model,
            worker=worker.id,
            retryable=True,
        ) from None
    try:
        return as_result_text(extract(document, worker.extract, source))
    except ExtractError as exc:
        raise UpstreamError(
            str(exc), model=worker.model, worker=worker.id, retryable=True
        ) from None


async def _complete_text_openai(
    transport: Transport,
    worker: Worker,
    prompt: str,
    temperature: float | None,
    request_id: str | None,
) -> str:
    url = openai_url(worker, "/chat/completions")
    payload: dict[str, Any] = {
        "model": worker.spec.target_model,
        "messages": [{"role": "user", "content": prompt}],
    }
    if temperature is not None:
        payload["temperature"] = temperature
    resp = await send(
        transport,
        worker,
        "POST",
        url,
        body=orjson.dumps(payload),
        headers=upstream_headers(worker, request_id, "application/json"),
    )
    status = resp.status
    data = await read_all(worker, url, resp)
    if not 200 <= status < 300:
        raise status_failure(worker, url, status, data, resp.headers)
    source = f"worker {worker.id} ({url})"
    try:
        document = orjson.loads(data)
        text = as_result_text(extract(document, _CHAT_CONTENT_PATH, source))
    except (orjson.JSONDecodeError, ExtractError):
        raise UpstreamError(
            f"{source} did not return an OpenAI chat completion (no choices[0].message.content)",
            model=worker.model,
            worker=worker.id,
            retryable=True,
        ) from None
    counts = usage_counts(document)
    if counts is None:
        record_tokens(estimate_tokens(prompt), estimate_tokens(text), estimated=True)
    else:
        record_tokens(*counts, estimated=False)
    return text


def render_messages(messages: Any) -> str:
    """An OpenAI conversation as one prompt for a template worker.

    A lone user message is passed as it is; a longer conversation becomes `role: content` lines.
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty array of {role, content} objects")
    rendered: list[tuple[str, str]] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError("each message must be an object with a role and content")
        rendered.append((message["role"], _content_text(message.get("content"))))
    if len(rendered) == 1:
        return rendered[0][1]
    return "\n".join(f"{role}: {text}" for role, text in rendered)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    raise ValueError("message content must be a string or an array of content parts")
