"""What each route of the table accepts and answers, for the OpenAPI document only.

The endpoints read raw bytes and parse them once themselves (`routes/body.py`); nothing here
parses a request. These models say what the endpoints accept, so that a reader of `/docs`, a
client generator or a fuzzer knows the bodies: `routing.openapi_schema` builds the document
from the route table and `OPERATIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from balancer.registry.models import WorkerSpec

# The OpenAI API grows new fields every month; a worker may know fields we do not: they are
# passed through as they are.
_PASSED_ON = ConfigDict(extra="allow")


class ContentPart(BaseModel):
    model_config = _PASSED_ON
    type: str = Field(examples=["text"])
    text: str | SkipJsonSchema[None] = None
    """Template workers get the text of the `text` parts."""


class ChatMessage(BaseModel):
    model_config = _PASSED_ON
    role: str = Field(examples=["user"])
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = _PASSED_ON
    include_usage: bool | None = None


TokenIds = list[int]
Prompt = str | list[str] | TokenIds | list[TokenIds]


class _OpenAIRequest(BaseModel):
    model_config = _PASSED_ON
    model: str = Field(min_length=1, description="A registered model_name", examples=["demo"])
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None


class ChatCompletionRequest(_OpenAIRequest):
    """OpenAI's chat completion request. Template workers get the conversation as one prompt."""

    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_OpenAIRequest):
    """OpenAI's (legacy) text completion request. Template workers take one string prompt."""

    prompt: Prompt


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request, for OpenAI-compatible workers."""

    model_config = _PASSED_ON
    model: str = Field(min_length=1, description="A registered model_name", examples=["demo"])
    input: Prompt
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class ResponseRequest(BaseModel):
    """OpenAI's Responses API request, for OpenAI-compatible workers. With
    `previous_response_id`, it goes to the worker that made that response."""

    model_config = _PASSED_ON
    model: str = Field(min_length=1, description="A registered model_name", examples=["demo"])
    input: str | list[Any] | None = None
    instructions: str | None = None
    previous_response_id: str | None = Field(
        None, description="Continues this stored response, on the worker that holds it"
    )
    stream: bool = False
    store: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)


class ImageRequest(BaseModel):
    """OpenAI's image generation request."""

    model_config = _PASSED_ON
    model: str = Field(min_length=1, description="A registered model_name", examples=["demo"])
    prompt: str
    n: int | None = Field(None, ge=1)
    size: str | None = None
    response_format: Literal["url", "b64_json"] | None = None


class ImageEditForm(BaseModel):
    """OpenAI's image edit request, a multipart/form-data upload."""

    model: str = Field(min_length=1, description="A registered model_name", examples=["demo"])
    prompt: str
    image: bytes = Field(description="The image to edit (a file part)")


class AudioForm(BaseModel):
    """OpenAI's transcription (or translation) request, a multipart/form-data upload."""

    model: str = Field(min_length=1, description="A registered model_name", examples=["demo"])
    file: bytes = Field(description="The audio (a file part)")
    language: str | None = None
    response_format: str | None = None
    stream: bool = False


class SpeechRequest(BaseModel):
    """OpenAI's text-to-speech request; the audio is relayed as the worker sends it."""

    model_config = _PASSED_ON
    model: str = Field(min_length=1, description="A registered model_name", examples=["demo"])
    input: str
    voice: str | None = None
    response_format: str | None = None


class RerankRequest(BaseModel):
    """A rerank request (Jina and Cohere shape, as vLLM serves it)."""

    model_config = _PASSED_ON
    model: str = Field(min_length=1, description="A registered model_name", examples=["demo"])
    query: str
    documents: list[str | dict[str, Any]]
    top_n: int | None = Field(None, ge=1)


class ScoreRequest(BaseModel):
    """vLLM's score request: text pairs to score."""

    model_config = _PASSED_ON
    model: str = Field(min_length=1, description="A registered model_name", examples=["demo"])
    text_1: str | list[str]
    text_2: str | list[str]


class PassThroughRequest(BaseModel):
    """Any other OpenAI-style request: relayed to a worker of its model as it is."""

    model_config = _PASSED_ON
    model: str = Field(min_length=1, description="A registered model_name", examples=["demo"])


class OperateGPTRequest(BaseModel):
    """OperateGPT's inference request: one prompt for a worker of the model."""

    input: str = Field(min_length=1, pattern=r"\S", description="The prompt")
    model_name: str = Field(
        min_length=1, pattern=r"\S", description="A registered model_name", examples=["demo"]
    )
    temperature: float | None = None


class OfflineRequest(BaseModel):
    """The worker to take offline: its model and URL, as registered (compared normalised)."""

    model_name: str = Field(min_length=1, pattern=r"\S")
    req_url_template: str = Field(min_length=1, pattern=r"\S")


class DrainRequest(OfflineRequest):
    """The worker to drain: it takes no new request, those in flight finish, then it is
    removed."""


class WeightRequest(OfflineRequest):
    """The worker whose weight changes, and its new weight."""

    weight: float = Field(gt=0)


# Answers


class Usage(BaseModel):
    model_config = _PASSED_ON
    prompt_tokens: int
    completion_tokens: int | None = None
    total_tokens: int


class AssistantMessage(BaseModel):
    model_config = _PASSED_ON
    role: str
    content: str | None = None


class ChatChoice(BaseModel):
    model_config = _PASSED_ON
    index: int
    message: AssistantMessage
    finish_reason: str | None = None


class ChatCompletion(BaseModel):
    """OpenAI's chat completion (the worker's own, relayed, or made from a template worker's
    answer). With `"stream": true`, server-sent `chat.completion.chunk` events instead."""

    model_config = _PASSED_ON
    id: str
    object: str = Field(examples=["chat.completion"])
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class TextChoice(BaseModel):
    model_config = _PASSED_ON
    index: int
    text: str
    finish_reason: str | None = None


class TextCompletion(BaseModel):
    """OpenAI's text completion; with `"stream": true`, server-sent events instead."""

    model_config = _PASSED_ON
    id: str
    object: str = Field(examples=["text_completion"])
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    model_config = _PASSED_ON
    object: str = Field(examples=["embedding"])
    index: int
    embedding: list[float] | str


class EmbeddingList(BaseModel):
    model_config = _PASSED_ON
    object: str = Field(examples=["list"])
    data: list[Embedding]
    model: str
    usage: Usage | None = None


class ResponseObject(BaseModel):
    """A response of the Responses API; with `"stream": true`, typed server-sent events
    (`response.created`, `response.output_text.delta`, ..., `response.completed`)."""

    model_config = _PASSED_ON
    id: str
    object: str = Field(examples=["response"])
    model: str
    output: list[Any]
    usage: dict[str, Any] | None = None


class Deleted(BaseModel):
    model_config = _PASSED_ON
    id: str
    object: str = Field(examples=["response"])
    deleted: bool


class ImageList(BaseModel):
    model_config = _PASSED_ON
    created: int
    data: list[dict[str, Any]]


class Transcription(BaseModel):
    model_config = _PASSED_ON
    text: str


class RerankAnswer(BaseModel):
    model_config = _PASSED_ON
    results: list[dict[str, Any]]


class ScoreList(BaseModel):
    model_config = _PASSED_ON
    data: list[dict[str, Any]]


class ModelObject(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelObject]


class OperateGPTAnswer(BaseModel):
    success: Literal[True]
    msg: str
    result: str = Field(description="The worker's answer, as text")


class Registered(BaseModel):
    success: Literal[True]
    msg: str
    id: str = Field(description="The worker's id, stable across restarts")
    created: bool = Field(description="False: an existing worker was updated")


class WorkerView(BaseModel):
    """A worker as listed: its registration (secrets shown as ***) and its live state."""

    model_config = _PASSED_ON
    id: str
    model_name: str
    req_url_template: str
    api: str
    status: Literal["healthy", "ejected", "unknown", "draining"]
    inflight: int
    weight: float


class WorkerList(BaseModel):
    success: Literal[True]
    data: list[WorkerView]


class Done(BaseModel):
    success: Literal[True]
    msg: str


class Draining(BaseModel):
    success: Literal[True]
    msg: str
    id: str
    inflight: int = Field(description="Requests in flight it finishes before it is removed")


class WeightChanged(BaseModel):
    success: Literal[True]
    msg: str
    id: str
    weight: float


class LiveView(BaseModel):
    success: Literal[True]
    data: dict[str, Any] = Field(
        description="models: per model its strategy, QPS, error ratio, latency percentiles and "
        "history, and its workers as listed with their health, probes, latencies and history"
    )


class HealthView(BaseModel):
    success: Literal[True]
    data: dict[str, dict[str, Any]] = Field(
        description="Per model: counts by state, and each worker's state, failures and probes"
    )


class Status(BaseModel):
    status: str
    reason: str | None = None


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    """An error, in OpenAI's envelope."""

    error: OpenAIErrorDetail


class OperateGPTError(BaseModel):
    """An error, in OperateGPT's envelope."""

    success: Literal[False]
    msg: str


@dataclass(frozen=True, slots=True)
class Operation:
    """What one route takes and gives."""

    body: type[BaseModel] | None = None
    answer: type[BaseModel] | None = None
    """The 200 answer, as JSON; None: plain text."""
    streams: bool = False
    """`"stream": true` answers with server-sent events."""
    query: tuple[tuple[str, str], ...] = ()
    """Optional query parameters: (name, description)."""
    errors: tuple[int, ...] = ()
    """The error statuses it answers with (in its route's envelope)."""
    other_answers: tuple[tuple[int, type[BaseModel]], ...] = ()
    """Other statuses it answers with, and what they carry."""
    form: bool = False
    """The body is a multipart/form-data upload, not JSON."""
    html: bool = False
    """Answers with a web page."""


_INFERENCE_ERRORS = (400, 401, 404, 413, 502, 503, 504)
_ADMIN_ERRORS = (400, 401, 403, 413, 415)

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/v1/chat/completions"): Operation(
        ChatCompletionRequest, ChatCompletion, streams=True, errors=_INFERENCE_ERRORS
    ),
    ("POST", "/v1/completions"): Operation(
        CompletionRequest, TextCompletion, streams=True, errors=_INFERENCE_ERRORS
    ),
    ("POST", "/v1/embeddings"): Operation(
        EmbeddingRequest, EmbeddingList, errors=_INFERENCE_ERRORS
    ),
    ("POST", "/v1/responses"): Operation(
        ResponseRequest, ResponseObject, streams=True, errors=_INFERENCE_ERRORS
    ),
    ("GET", "/v1/responses/{response_id}"): Operation(
        answer=ResponseObject, errors=(401, 404, 502, 503, 504)
    ),
    ("DELETE", "/v1/responses/{response_id}"): Operation(
        answer=Deleted, errors=(401, 404, 502, 503, 504)
    ),
    ("POST", "/v1/responses/{response_id}"): Operation(
        answer=ResponseObject, errors=(400, 401, 404, 502, 503, 504)
    ),
    ("POST", "/v1/images/generations"): Operation(
        ImageRequest, ImageList, errors=_INFERENCE_ERRORS
    ),
    ("POST", "/v1/images/edits"): Operation(
        ImageEditForm, ImageList, errors=_INFERENCE_ERRORS, form=True
    ),
    ("POST", "/v1/audio/transcriptions"): Operation(
        AudioForm, Transcription, errors=_INFERENCE_ERRORS, form=True
    ),
    ("POST", "/v1/audio/translations"): Operation(
        AudioForm, Transcription, errors=_INFERENCE_ERRORS, form=True
    ),
    ("POST", "/v1/audio/speech"): Operation(SpeechRequest, errors=_INFERENCE_ERRORS),
    ("POST", "/v1/rerank"): Operation(RerankRequest, RerankAnswer, errors=_INFERENCE_ERRORS),
    ("POST", "/v1/score"): Operation(ScoreRequest, ScoreList, errors=_INFERENCE_ERRORS),
    ("POST", "/v2/rerank"): Operation(RerankRequest, RerankAnswer, errors=_INFERENCE_ERRORS),
    ("POST", "/v1/{path}"): Operation(PassThroughRequest, errors=_INFERENCE_ERRORS),
    ("POST", "/api/v1/chat/completions"): Operation(
        OperateGPTRequest, OperateGPTAnswer, errors=_INFERENCE_ERRORS
    ),
    ("GET", "/v1/models"): Operation(answer=ModelList, errors=(401,)),
    ("GET", "/v1/models/{model}"): Operation(answer=ModelObject, errors=(401, 404)),
    ("POST", "/api/server/register"): Operation(WorkerSpec, Registered, errors=_ADMIN_ERRORS),
    ("GET", "/api/server/workers"): Operation(
        answer=WorkerList, query=(("model_name", "Only the workers of this model"),)
    ),
    ("POST", "/api/server/offline"): Operation(OfflineRequest, Done, errors=(*_ADMIN_ERRORS, 404)),
    ("POST", "/api/server/drain"): Operation(DrainRequest, Draining, errors=(*_ADMIN_ERRORS, 404)),
    ("POST", "/api/server/weight"): Operation(
        WeightRequest, WeightChanged, errors=(*_ADMIN_ERRORS, 404)
    ),
    ("GET", "/api/server/health"): Operation(answer=HealthView),
    ("GET", "/api/server/live"): Operation(answer=LiveView),
    ("GET", "/ui"): Operation(html=True),
    ("GET", "/healthz"): Operation(answer=Status),
    ("GET", "/readyz"): Operation(
        answer=Status,
        query=(("model", "Ready only if this model has a healthy worker"),),
        other_answers=((503, Status),),
    ),
    ("GET", "/metrics"): Operation(),
}
"""Every route of `routing.ROUTES`, by (method, path)."""

ERROR_ENVELOPES: dict[str, type[BaseModel]] = {
    "openai": OpenAIError,
    "operategpt": OperateGPTError,
}
