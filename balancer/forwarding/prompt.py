"""One prompt in, the answer's text out, from either kind of worker: a template worker gets its
body template filled and its answer read at `response_extract`; an OpenAI worker gets a chat
completion request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from balancer.errors import BadRequest, UpstreamError
from balancer.forwarding.lease import Lease
from balancer.forwarding.openai_format import estimate_tokens, usage_counts
from balancer.forwarding.transport import Transport
from balancer.forwarding.upstream import UpstreamReply, openai_url, send, upstream_headers
from balancer.registry.models import Worker
from balancer.templating import (
    DEFAULT_TEMPERATURE,
    MODEL_NAME,
    MODEL_TEMPERATURE,
    USER_PROMPT,
    ExtractError,
    UnsafeUrlValue,
    as_result_text,
    extract,
    fill,
    fill_url,
)

_CHAT_CONTENT_PATH = ("choices", 0, "message", "content")


async def complete_text(
    transport: Transport, lease: Lease, prompt: str, temperature: float | None
) -> str:
    """The worker's answer to `prompt`. Tokens go to the request's record: the worker's `usage`
    where it reports one, an estimate otherwise."""
    if lease.worker.spec.api == "openai":
        return await _complete_text_openai(transport, lease, prompt, temperature)
    text = await _complete_text_template(transport, lease, prompt, temperature)
    lease.record.tokens(estimate_tokens(prompt), estimate_tokens(text), estimated=True)
    return text


@dataclass(frozen=True, slots=True)
class TemplateRequest:
    method: str
    url: str
    body: bytes | None
    content_type: str | None


def template_request(worker: Worker, prompt: str, temperature: float | None) -> TemplateRequest:
    """The request a template worker gets for a prompt: its templates filled afresh.

    Raises BadRequest when the prompt would change the URL's path (see `fill_url`)."""
    spec = worker.spec
    values: dict[str, Any] = {
        USER_PROMPT: prompt,
        MODEL_NAME: spec.target_model,
        MODEL_TEMPERATURE: DEFAULT_TEMPERATURE if temperature is None else temperature,
    }
    try:
        url = fill_url(spec.req_url_template, values)
    except UnsafeUrlValue as exc:
        # The prompt's own doing (a GET template's prompt of "." or ".."): no worker is to blame.
        raise BadRequest(
            f"the request cannot be sent to worker {worker.id}: {exc}",
            model=worker.model,
            worker=worker.id,
        ) from None
    if spec.req_type == "GET" or spec.body is None:
        return TemplateRequest(spec.req_type, url, None, None)
    filled = fill(spec.body, values)
    if isinstance(filled, str):
        return TemplateRequest(spec.req_type, url, filled.encode(), "text/plain; charset=utf-8")
    return TemplateRequest(spec.req_type, url, orjson.dumps(filled), "application/json")


async def _complete_text_template(
    transport: Transport, lease: Lease, prompt: str, temperature: float | None
) -> str:
    worker = lease.worker
    spec = worker.spec
    request = template_request(worker, prompt, temperature)
    reply = await send(
        transport,
        worker,
        request.method,
        request.url,
        body=request.body,
        headers=upstream_headers(worker, lease.record.request_id, request.content_type),
    )
    data = await _read_ok(reply)
    if worker.extract is None:
        return data.decode("utf-8", "replace")
    source = f"worker {worker.id}"
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
    transport: Transport, lease: Lease, prompt: str, temperature: float | None
) -> str:
    worker = lease.worker
    url = openai_url(worker, "/chat/completions")
    payload: dict[str, Any] = {
        "model": worker.spec.target_model,
        "messages": [{"role": "user", "content": prompt}],
    }
    if temperature is not None:
        payload["temperature"] = temperature
    reply = await send(
        transport,
        worker,
        "POST",
        url,
        body=orjson.dumps(payload),
        headers=upstream_headers(worker, lease.record.request_id, "application/json"),
    )
    data = await _read_ok(reply)
    source = f"worker {worker.id}"
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
        lease.record.tokens(estimate_tokens(prompt), estimate_tokens(text), estimated=True)
    else:
        lease.record.tokens(*counts, estimated=False)
    return text


async def _read_ok(reply: UpstreamReply) -> bytes:
    """The whole body of a 2xx answer; any other status is the worker's failure."""
    data = await reply.read()
    if not 200 <= reply.status < 300:
        raise reply.status_failure(data)
    return data
