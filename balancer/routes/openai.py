"""The OpenAI-compatible API, so the openai SDK and LangChain work unchanged.

Bodies are read as bytes and parsed once; for OpenAI workers they pass through with only `model`
renamed. Template workers answer too: the conversation becomes their {USER_PROMPT}.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from balancer.auth import require_api_key
from balancer.errors import BadRequest, ModelNotFound
from balancer.events import RequestRecord
from balancer.forwarding import openai_format, sse
from balancer.forwarding.lease import Lease
from balancer.forwarding.prompt import complete_text
from balancer.forwarding.relay import Relayed, relay_openai
from balancer.registry import Worker
from balancer.responses import Reply, StreamReply, json_response, served_headers
from balancer.routes.body import optional_number, read_json_object
from balancer.selection.prompt_key import prompt_key
from balancer.selection.sessions import session_of
from balancer.wiring import Balancer

TemplateAnswer = Callable[[Balancer, Lease, dict[str, Any]], Awaitable[Relayed]]


async def list_models(request: Request, balancer: Balancer) -> Response:
    """Every registered model, as OpenAI's model list."""
    require_api_key(request, balancer.settings)
    registry = balancer.registry
    data = [_model_object(model, registry.workers_of(model) or []) for model in registry.models()]
    return json_response({"object": "list", "data": data})


async def retrieve_model(request: Request, balancer: Balancer) -> Response:
    """One registered model, as OpenAI's model object (404 model_not_found if unknown)."""
    require_api_key(request, balancer.settings)
    model = request.path_params["model"]
    workers = balancer.registry.workers_of(model)
    if not workers:
        raise ModelNotFound(model)
    return json_response(_model_object(model, workers))


def _model_object(model: str, workers: list[Worker]) -> dict[str, Any]:
    owner = next((w.spec.owner for w in workers if w.spec.owner), None) or "llm-balancer"
    return {"id": model, "object": "model", "created": 0, "owned_by": owner}


async def chat_completions(request: Request, balancer: Balancer, record: RequestRecord) -> Reply:
    """A chat completion, streamed or not, from a worker of the model."""
    return await _forward(request, balancer, record, "/chat/completions", _chat_from_template)


async def completions(request: Request, balancer: Balancer, record: RequestRecord) -> Reply:
    """A text completion, streamed or not, from a worker of the model."""
    return await _forward(request, balancer, record, "/completions", _completion_from_template)


async def embeddings(request: Request, balancer: Balancer, record: RequestRecord) -> Reply:
    """Embeddings, from an OpenAI-compatible worker of the model."""
    return await _forward(request, balancer, record, "/embeddings", None)


async def _forward(
    request: Request,
    balancer: Balancer,
    record: RequestRecord,
    path: str,
    from_template: TemplateAnswer | None,
) -> Reply:
    require_api_key(request, balancer.settings)
    raw, data = await read_json_object(request, balancer.settings.max_body_bytes)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required and must be a non-empty string")
    stream = data.get("stream")
    if stream is None:
        stream = False  # OpenAI's API takes null for false
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be true or false, got {stream!r}")
    workers = balancer.forwarder.workers_of(model)
    if balancer.selector.routes_on_prompts(model, balancer.registry.options(model).strategy):
        record.routing_key = prompt_key(data)
    record.session = session_of(request.headers.get("x-session-id"), data)
    accept = None
    if from_template is None:
        if not any(w.spec.api == "openai" for w in workers):
            raise BadRequest(
                f"model {model} has no OpenAI-compatible worker, and {path} needs one "
                '(register a worker with "api": "openai")',
                model=model,
            )
        accept = _is_openai
    options = data.get("stream_options")
    client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    # Streams carry token counts only when asked; ask on the client's behalf (and take the
    # extra chunk out again) so that every stream is metered.
    ask_usage = stream and from_template is not None and balancer.settings.stream_usage
    extra: dict[str, Any] = {}
    if ask_usage and not client_wants_usage:
        extra["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    # Rewritten once per target name, not once per attempt.
    payloads: dict[str, bytes] = {}

    def payload_for(worker: Worker) -> bytes:
        target = worker.spec.target_model
        if target == model and not extra:
            return raw
        if target not in payloads:
            payloads[target] = orjson.dumps({**data, **extra, "model": target})
        return payloads[target]

    async def attempt(lease: Lease) -> Relayed:
        if lease.worker.spec.api == "openai":
            return await relay_openai(
                balancer.transport,
                lease,
                path,
                payload_for(lease.worker),
                stream=stream,
                strip_usage=bool(extra),
                model=model,
            )
        assert from_template is not None
        return await from_template(balancer, lease, data)

    served = await balancer.forwarder.run(record, model, attempt, accept=accept)
    relayed = served.value
    headers = served_headers(served.worker.id, served.attempts)
    if relayed.stream is not None:
        return StreamReply(
            relayed.stream,
            media_type=relayed.content_type,
            headers={**headers, **sse.HEADERS},
            close=relayed.close,
        )
    return Response(relayed.body, relayed.status, headers=headers, media_type=relayed.content_type)


def _is_openai(worker: Worker) -> bool:
    return worker.spec.api == "openai"


async def _chat_from_template(balancer: Balancer, lease: Lease, data: dict[str, Any]) -> Relayed:
    try:
        prompt = openai_format.render_messages(data.get("messages"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    text = await _template_text(balancer, lease, prompt, data)
    model = data["model"]
    if data.get("stream"):
        options = data.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        body = openai_format.chat_completion_stream(model, prompt, text, include_usage)
        return Relayed(200, sse.CONTENT_TYPE, stream=_one_chunk(body))
    return Relayed(
        200,
        "application/json",
        body=orjson.dumps(openai_format.chat_completion(model, prompt, text)),
    )


async def _completion_from_template(
    balancer: Balancer, lease: Lease, data: dict[str, Any]
) -> Relayed:
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string for this model's workers")
    text = await _template_text(balancer, lease, prompt, data)
    model = data["model"]
    if data.get("stream"):
        body = openai_format.text_completion_stream(model, prompt, text)
        return Relayed(200, sse.CONTENT_TYPE, stream=_one_chunk(body))
    return Relayed(
        200,
        "application/json",
        body=orjson.dumps(openai_format.text_completion(model, prompt, text)),
    )


async def _template_text(
    balancer: Balancer, lease: Lease, prompt: str, data: dict[str, Any]
) -> str:
    temperature = optional_number(data, "temperature")
    return await complete_text(balancer.transport, lease, prompt, temperature)


async def _one_chunk(body: bytes) -> AsyncIterator[bytes]:
    yield body
