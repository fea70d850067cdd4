"""The OpenAI-compatible API, so the openai SDK and LangChain work unchanged: chat, completions,
embeddings, the Responses API, images, audio, rerank and score, and any other path under /v1/
whose body names a model.

Bodies are read as bytes and parsed once (a form upload: only its text fields); for OpenAI
workers they pass through with only `model` renamed. Template workers answer chat and
completions too: the conversation becomes their {USER_PROMPT}.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from balancer.auth import require_api_key
from balancer.errors import (
    BadRequest,
    ModelNotFound,
    NotFound,
    NoWorkerAvailable,
)
from balancer.events import RequestRecord
from balancer.forwarding import openai_format, sse
from balancer.forwarding.affinity import response_id
from balancer.forwarding.forwarder import Served
from balancer.forwarding.lease import Lease
from balancer.forwarding.prompt import complete_text
from balancer.forwarding.relay import Relayed, StreamEvents, relay_openai
from balancer.registry import Worker
from balancer.responses import Reply, StreamReply, json_response, served_headers
from balancer.routes.body import optional_number, read_body, read_json_object
from balancer.routes.form import Form, is_form, read_form
from balancer.routes.targeting import Accept, both, note_routing, serving
from balancer.selection.prompt_key import prompt_key
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


@dataclass(frozen=True, slots=True)
class Endpoint:
    """How requests of one client path reach an OpenAI-compatible worker, and how its answers
    are read on their way back."""

    path: str
    """The client's path (what a registration's `endpoints` lists); under /v1/ it is the same
    path under the worker's base URL."""
    form: bool = False
    """The body is a multipart/form-data upload (its model in the `model` field)."""
    events: StreamEvents = "chat"
    estimate: bool = False
    """Count tokens from the texts when the worker reports no usage (text endpoints)."""
    always_streams: bool = False
    """The answer is relayed as it comes, asked for or not (speech audio)."""
    stores_responses: bool = False
    """Answers are stored responses a later request may continue (`previous_response_id`)."""
    relayed_statuses: tuple[int, ...] = ()
    """Worker statuses relayed as they are, not tried elsewhere nor charged to the worker."""

    @property
    def worker_path(self) -> str:
        return self.path[3:] if self.path.startswith("/v1/") else self.path


CHAT = Endpoint("/v1/chat/completions", estimate=True)
COMPLETIONS = Endpoint("/v1/completions", estimate=True)
EMBEDDINGS = Endpoint("/v1/embeddings", estimate=True)
RESPONSES = Endpoint("/v1/responses", events="typed", estimate=True, stores_responses=True)
IMAGE_GENERATIONS = Endpoint("/v1/images/generations", events="typed")
IMAGE_EDITS = Endpoint("/v1/images/edits", form=True, events="typed")
TRANSCRIPTIONS = Endpoint("/v1/audio/transcriptions", form=True, events="typed")
TRANSLATIONS = Endpoint("/v1/audio/translations", form=True, events="typed")
SPEECH = Endpoint("/v1/audio/speech", events="bytes", always_streams=True)
RERANK = Endpoint("/v1/rerank")
SCORE = Endpoint("/v1/score")
RERANK_V2 = Endpoint("/v2/rerank")
PASS_THROUGH_LABEL = "other"
"""The `endpoint` label of the pass-through's requests (the label values stay bounded)."""


async def chat_completions(request: Request, balancer: Balancer, record: RequestRecord) -> Reply:
    """A chat completion, streamed or not, from a worker of the model."""
    return await _forward(request, balancer, record, CHAT, _chat_from_template)


async def completions(request: Request, balancer: Balancer, record: RequestRecord) -> Reply:
    """A text completion, streamed or not, from a worker of the model."""
    return await _forward(request, balancer, record, COMPLETIONS, _completion_from_template)


async def embeddings(request: Request, balancer: Balancer, record: RequestRecord) -> Reply:
    """Embeddings, from an OpenAI-compatible worker of the model."""
    return await _forward(request, balancer, record, EMBEDDINGS)


async def responses(request: Request, balancer: Balancer, record: RequestRecord) -> Reply:
    """A response of the Responses API, streamed (typed events) or not; one that continues a
    stored response (`previous_response_id`) from the worker that holds it."""
    return await _forward(request, balancer, record, RESPONSES)


_STORED_RESPONSE_PARTS = {"GET": ("", "input_items"), "DELETE": ("",), "POST": ("cancel",)}
"""What follows a stored response's id, by method: `GET /v1/responses/{id}` and its
`/input_items`, `DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`."""


async def stored_response(request: Request, balancer: Balancer, record: RequestRecord) -> Reply:
    """A stored response (`GET /v1/responses/{id}`, and its `/input_items`), its deletion
    (`DELETE`), or the cancellation of a background one (`POST .../cancel`), at the worker that
    holds it."""
    require_api_key(request, balancer.settings)
    rest: str = request.path_params["response_id"]
    response, _, part = rest.partition("/")
    parts = _STORED_RESPONSE_PARTS.get(request.method, ())
    if part not in parts or not _SAFE_PATH.fullmatch(f"/{response}"):
        raise _no_route(request)
    owner_id = balancer.responses.owner(response)
    owner = balancer.registry.get(owner_id) if owner_id else None
    if owner is None:
        raise NotFound(
            f"response {response}: this balancer does not know which worker holds it (it "
            "remembers the responses made through it while their workers are registered)"
        )
    accept = _pinned(owner, owner.model, response, _is_openai)
    query = request.scope.get("query_string", b"").decode("latin-1")
    path = f"/responses/{rest}" + (f"?{query}" if query else "")

    async def attempt(lease: Lease) -> Relayed:
        return await relay_openai(
            balancer.transport,
            lease,
            path,
            b"",
            stream=False,
            method=request.method,
            model=owner.model,
            estimate=False,
            relayed_statuses=(404,),
        )

    served = await balancer.forwarder.run(record, owner.model, attempt, accept=accept)
    relayed = served.value
    if request.method == "DELETE" and relayed.status == 200 and rest == response:
        balancer.responses.forget(response)
    headers = served_headers(served.worker.id, served.attempts)
    return Response(relayed.body, relayed.status, headers=headers, media_type=relayed.content_type)


async def image_generations(request: Request, balancer: Balancer, record: RequestRecord) -> Reply:
    """Images made from a prompt."""
    return await _forward(request, balancer, record, IMAGE_GENERATIONS)


async def image_edits(request: Request, balancer: Balancer, record: RequestRecord) -> Reply:
    """An uploaded image edited (multipart/form-data)."""
    return await _forward(request, balancer, record, IMAGE_EDITS)


async def transcriptions(request: Request, balancer: Balancer, record: RequestRecord) -> Reply:
    """Uploaded audio as text (multipart/form-data)."""
    return await _forward(request, balancer, record, TRANSCRIPTIONS)


async def translations(request: Request, balancer: Balancer, record: RequestRecord) -> Reply:
    """Uploaded audio as English text (multipart/form-data)."""
    return await _forward(request, balancer, record, TRANSLATIONS)


async def speech(request: Request, balancer: Balancer, record: RequestRecord) -> Reply:
    """Text as audio, relayed as the worker sends it."""
    return await _forward(request, balancer, record, SPEECH)


async def rerank(request: Request, balancer: Balancer, record: RequestRecord) -> Reply:
    """Documents ranked by relevance to a query (Jina/Cohere-shaped, as vLLM serves it)."""
    return await _forward(request, balancer, record, RERANK)


async def score(request: Request, balancer: Balancer, record: RequestRecord) -> Reply:
    """Similarity scores of text pairs (vLLM's score API)."""
    return await _forward(request, balancer, record, SCORE)


async def rerank_v2(request: Request, balancer: Balancer, record: RequestRecord) -> Reply:
    """Cohere's v2 rerank API."""
    return await _forward(request, balancer, record, RERANK_V2)


async def pass_through(request: Request, balancer: Balancer, record: RequestRecord) -> Reply:
    """Any other POST under /v1/ whose body names a registered model, relayed to a worker of
    it as it is: the next endpoint a server adds works the day it ships."""
    path: str = request.scope["path"]
    if not _SAFE_PATH.fullmatch(path):
        # Only a plain path under /v1/ is passed on: no `..` that would reach beyond it on the
        # worker, nothing a URL would read another way.
        raise _no_route(request)
    # A worker's 404 or 405 for a path it does not have is its answer: a client's typo must
    # not count as the worker failing (and eject it).
    endpoint = Endpoint(path, events="bytes", relayed_statuses=(404, 405))
    query = request.scope.get("query_string", b"")
    return await _forward(
        request, balancer, record, endpoint, query=query.decode("latin-1"), unknown_path=True
    )


_SAFE_PATH = re.compile(r"(?:/[A-Za-z0-9_~\-][A-Za-z0-9._~\-]*)+")
"""Segments of letters, digits and `._~-`, none empty and none starting with a dot (so no `.`
or `..`)."""


@dataclass(slots=True)
class _Body:
    raw: bytes
    model: str
    stream: bool
    data: dict[str, Any] | None = None
    form: Form | None = None
    content_type: str = "application/json"


async def _read(request: Request, balancer: Balancer, endpoint: Endpoint, unknown: bool) -> _Body:
    limit = balancer.settings.max_body_bytes
    # Only uploads and unknown paths look at the Content-Type (JSON bodies are taken as JSON).
    content_type = request.headers.get("content-type") if endpoint.form or unknown else None
    if endpoint.form or (unknown and is_form(content_type)):
        form = read_form(await read_body(request, limit), content_type, ("model", "stream"))
        model = form.text("model")
        if not model:
            if unknown:
                raise _no_route(request)
            raise BadRequest("the form field model is required and must not be empty")
        stream_text = form.text("stream")
        if stream_text not in (None, "", "true", "false", "True", "False"):
            raise BadRequest(f"the form field stream must be true or false, got {stream_text!r}")
        assert content_type is not None
        return _Body(
            form.body,
            model,
            stream_text in ("true", "True"),
            form=form,
            content_type=content_type,
        )
    try:
        raw, data = await read_json_object(request, limit)
    except BadRequest:
        if unknown:
            raise _no_route(request) from None
        raise
    model = data.get("model")
    if unknown and (not isinstance(model, str) or not model):
        raise _no_route(request)
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required and must be a non-empty string")
    stream = data.get("stream")
    if stream is None:
        stream = False  # OpenAI's API takes null for false
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be true or false, got {stream!r}")
    return _Body(raw, model, stream, data=data)


def _no_route(request: Request) -> NotFound:
    return NotFound(
        f"no route {request.url.path}: a path the balancer does not know is relayed only "
        "with a JSON or form body that names a registered model"
    )


async def _forward(
    request: Request,
    balancer: Balancer,
    record: RequestRecord,
    endpoint: Endpoint,
    from_template: TemplateAnswer | None = None,
    *,
    query: str = "",
    unknown_path: bool = False,
) -> Reply:
    require_api_key(request, balancer.settings)
    body = await _read(request, balancer, endpoint, unknown_path)
    model, stream, data = body.model, body.stream, body.data
    path = endpoint.path
    workers = balancer.forwarder.workers_of(model)
    fields = data if data is not None else {}  # a form upload routes by its model alone
    note_routing(balancer, request, record, model, fields, prompt=lambda: prompt_key(fields))
    accept: Accept | None = None
    if from_template is None:
        if not any(w.spec.api == "openai" for w in workers):
            raise BadRequest(
                f"model {model} has no OpenAI-compatible worker, and {path} needs one "
                '(register a worker with "api": "openai")',
                model=model,
            )
        accept = _is_openai
    accept = serving(model, workers, path, lambda worker: worker.serves(path), accept)
    relayed_statuses = endpoint.relayed_statuses
    previous = data.get("previous_response_id") if data and endpoint.stores_responses else None
    searching = False
    if isinstance(previous, str) and previous:
        owner_id = balancer.responses.owner(previous)
        if owner_id is None:
            # Made before a restart, or through another process of `--workers N`: the worker
            # that holds it is found by asking, and a 404 is "not here", not a failure.
            searching = True
        else:
            accept = _pinned(balancer.registry.get(owner_id), model, previous, accept)
        relayed_statuses = (*relayed_statuses, 404)
    options = data.get("stream_options") if data else None
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
            return body.raw
        if target not in payloads:
            if body.form is not None:
                payloads[target] = body.form.with_value("model", target)
            else:
                assert data is not None
                payloads[target] = orjson.dumps({**data, **extra, "model": target})
        return payloads[target]

    worker_path = endpoint.worker_path + (f"?{query}" if query else "")

    async def attempt(lease: Lease) -> Relayed:
        if lease.worker.spec.api == "openai":
            return await relay_openai(
                balancer.transport,
                lease,
                worker_path,
                payload_for(lease.worker),
                stream=stream or endpoint.always_streams,
                strip_usage=bool(extra),
                model=model,
                content_type=body.content_type,
                events=endpoint.events,
                estimate=endpoint.estimate,
                relayed_statuses=relayed_statuses,
            )
        assert from_template is not None and data is not None
        return await from_template(balancer, lease, data)

    served = await balancer.forwarder.run(record, model, attempt, accept=accept)
    if searching:
        served = await _search(balancer, record, model, workers, attempt, accept, served)
    relayed = served.value
    if searching and relayed.status == 200:
        assert isinstance(previous, str)
        balancer.responses.remember(previous, served.worker.id)
    if endpoint.stores_responses and relayed.status == 200:
        streamed = relayed.stream is not None
        created = response_id(relayed.head if streamed else relayed.body or b"", streamed=streamed)
        if created is not None:
            balancer.responses.remember(created, served.worker.id)
    headers = served_headers(served.worker.id, served.attempts)
    if relayed.stream is not None:
        return StreamReply(
            relayed.stream,
            media_type=relayed.content_type,
            headers={**headers, **sse.HEADERS},
            close=relayed.close,
        )
    return Response(relayed.body, relayed.status, headers=headers, media_type=relayed.content_type)


async def _search(
    balancer: Balancer,
    record: RequestRecord,
    model: str,
    workers: list[Worker],
    attempt: Callable[[Lease], Awaitable[Relayed]],
    accept: Accept | None,
    served: Served[Relayed],
) -> Served[Relayed]:
    """Ask the model's other workers, one by one, while each says it does not hold the
    response (404): the last answer is the client's."""
    asked = {served.worker.id}
    attempts = served.attempts
    while served.value.status == 404:
        left = {w.id for w in workers if w.id not in asked and (accept is None or accept(w))}
        if not left:
            break

        def unasked(worker: Worker, left: set[str] = left) -> bool:
            return worker.id in left

        served = await balancer.forwarder.run(record, model, attempt, accept=unasked)
        asked.add(served.worker.id)
        attempts += served.attempts
    served.attempts = attempts
    return served


def _pinned(owner: Worker | None, model: str, response: str, accept: Accept | None) -> Accept:
    """Only `owner`, the worker that created `response` (None: no longer registered), may
    continue it, while it is in service."""
    if owner is None or owner.removed:
        raise NotFound(
            f"response {response} was made by a worker that is no longer registered, and only "
            "it held that response's state; start again without previous_response_id",
            model=model,
        )
    if owner.status == "ejected":
        error = NoWorkerAvailable(
            f"response {response} was made by worker {owner.id}, which holds its state and is "
            "out of service (ejected); try again later",
            model=model,
            worker=owner.id,
        )
        error.retry_after = 1.0
        raise error
    return both(accept, lambda worker: worker is owner)


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
