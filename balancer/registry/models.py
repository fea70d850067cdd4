"""What a worker is: its registration (validated once) and its live state."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from balancer.errors import BadRequest
from balancer.logging import redact_headers, redact_text, redact_url
from balancer.templating import (
    MODEL_NAME,
    MODEL_TEMPERATURE,
    USER_PROMPT,
    ExtractPath,
    UnsafeUrlValue,
    contains_placeholder,
    fill_url,
    misplaced_url_placeholder,
    parse_extract_path,
)
from balancer.types import Api, ShownStatus, Strategy, WorkerStatus
from probes.engine_metrics import EngineLoad
from probes.health import HealthPolicy, WorkerHealth

_DEFAULT_PORTS = {"http": 80, "https": 443}

FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})
"""Headers that say where a request goes and where it ends: only the balancer sets them."""
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""RFC 9110's token."""
_BAD_HEADER_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""Control characters (CR and LF among them) other than horizontal tab."""

_ENDPOINT = re.compile(r"/[A-Za-z0-9._~\-/]{1,200}")
"""A client path such as /v1/audio/transcriptions."""

# Fields the OperateGPT WorkerConnection accepted that mean nothing here; accepted so existing
# OperateGPT clients keep working.
LEGACY_FIELDS = ("worker_type", "is_stream", "req_param")


class WorkerSpec(BaseModel):
    """A registration, as posted to /api/server/register or listed under `workers:`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model_name: str = Field(min_length=1, max_length=200)
    req_url_template: str = Field(min_length=1, max_length=4096)
    body: dict[str, Any] | list[Any] | str | None = None
    owner: str | None = None
    response_extract: str | None = None
    req_type: Literal["POST", "GET"] = "POST"
    header: dict[str, str] | None = None
    api: Api = "template"
    upstream_model: str | None = Field(None, min_length=1)
    weight: float = Field(1.0, gt=0)
    health_url: str | None = None
    timeout: float | None = Field(None, gt=0)
    """Seconds for a whole answer (first chunk of a stream); None: BALANCER_WORKER_TIMEOUT."""
    probe: Literal["health", "inference"] = "health"
    max_concurrency: int | None = Field(None, ge=1)
    strategy: Strategy | None = None
    fallbacks: list[str] | None = None
    endpoints: list[str] | None = None
    """The client paths an OpenAI worker serves (`/v1/chat/completions`, `/v1/images/generations`,
    ...); None: every one."""
    worker_type: str | None = None
    is_stream: bool | None = None
    req_param: dict[str, Any] | None = None

    @field_validator("model_name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        if any(ord(c) < 32 for c in value):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("fallbacks")
    @classmethod
    def _fallbacks(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not name.strip() for name in value):
            raise ValueError("must be a list of model names")
        return value

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must name at least one endpoint, or be left out (every endpoint)")
        for path in value:
            if not _ENDPOINT.fullmatch(path):
                raise ValueError(
                    f"{path!r} is not an endpoint path; write them as clients call them, "
                    'e.g. ["/v1/chat/completions", "/v1/responses"]'
                )
        return value

    @field_validator("req_type", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("req_url_template")
    @classmethod
    def _placeholders_in_path_or_query(cls, value: str) -> str:
        # Declared before `_http_url`, so it runs first: "not a valid URL" would say less about
        # a placeholder in the port.
        part = misplaced_url_placeholder(value)
        if part is not None:
            raise ValueError(
                f"a placeholder may only fill the URL's path or query, not its {part}: "
                "the prompt must not choose where it is sent"
            )
        return value

    @field_validator("req_url_template", "health_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            normalise_url(value)  # raises ValueError with the reason
        return value

    @model_validator(mode="before")
    @classmethod
    def _headers(cls, data: Any) -> Any:
        # Before the fields, and with no field location, so that the error does not quote the
        # header values back (they may be keys); the type check of `header` comes after.
        headers = data.get("header") if isinstance(data, dict) else None
        if not isinstance(headers, dict):
            return data
        for name, value in headers.items():
            if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"header: {name!r} is not a valid header name")
            if name.lower() in FRAMING_HEADERS:
                raise ValueError(
                    f"header: {name} cannot be registered: the balancer sets it on each "
                    "request, as it frames the request on the wire"
                )
            if isinstance(value, str) and _BAD_HEADER_VALUE.search(value):
                raise ValueError(
                    f"header: the value of {name} contains CR, LF or another control character"
                )
        return data

    @field_validator("weight", "timeout")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("response_extract")
    @classmethod
    def _extract(cls, value: str | None) -> str | None:
        if value:
            parse_extract_path(value)
        return value

    @model_validator(mode="after")
    def _template_has_prompt(self) -> WorkerSpec:
        if self.api == "template" and not (
            contains_placeholder(self.body, USER_PROMPT) or USER_PROMPT in self.req_url_template
        ):
            raise ValueError(
                "a template worker's body (or URL) must contain the placeholder {USER_PROMPT} "
                'where the prompt goes, e.g. "body": {"input": "{USER_PROMPT}"}; '
                'for an OpenAI-compatible server register with "api": "openai"'
            )
        return self

    @model_validator(mode="after")
    def _model_name_keeps_the_path(self) -> WorkerSpec:
        if self.api == "template" and MODEL_NAME in self.req_url_template:
            values = {MODEL_NAME: self.target_model, USER_PROMPT: "x", MODEL_TEMPERATURE: 0.0}
            try:
                fill_url(self.req_url_template, values)
            except UnsafeUrlValue as exc:
                raise ValueError(f"req_url_template with this model name: {exc}") from None
        return self

    @model_validator(mode="after")
    def _not_own_fallback(self) -> WorkerSpec:
        if self.fallbacks and self.model_name in self.fallbacks:
            raise ValueError(f"fallbacks must not name the model itself ({self.model_name})")
        return self

    @property
    def worker_id(self) -> str:
        return worker_id(self.model_name, self.req_url_template)

    @property
    def target_model(self) -> str:
        return self.upstream_model or self.model_name


def parse_spec(data: Any) -> WorkerSpec:
    """Validate a registration; pydantic's errors become one message that says how to fix it."""
    if not isinstance(data, dict):
        raise BadRequest(
            "the request body must be a JSON object with at least model_name and req_url_template"
        )
    try:
        return WorkerSpec.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in error["loc"])
        kind = error["type"]
        if kind == "extra_forbidden":
            allowed = ", ".join(f for f in WorkerSpec.model_fields if f not in LEGACY_FIELDS)
            parts.append(f"unknown field {loc!r} (allowed: {allowed})")
        elif kind == "missing":
            parts.append(f"{loc} is required")
        elif loc:
            msg = error["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg} (got {error.get('input')!r})")
        else:
            parts.append(error["msg"].removeprefix("Value error, "))
    return redact_text("invalid worker registration: " + "; ".join(parts))


def normalise_url(url: str) -> str:
    """Scheme and host lower-cased, default port and trailing slash dropped.

    Raises ValueError (with the reason) for anything that is not an absolute http(s) URL.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError("must be an http:// or https:// URL")
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError("must name a host, e.g. http://127.0.0.1:8000/generate")
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    if parts.username:
        netloc = f"{parts.username}{':' + parts.password if parts.password else ''}@{netloc}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), parts.query, ""))


def worker_id(model_name: str, url: str) -> str:
    """A short id, stable across restarts, for a (model, normalised URL) pair."""
    digest = hashlib.sha1(f"{model_name}\n{normalise_url(url)}".encode()).hexdigest()
    return digest[:12]


@dataclass(eq=False, slots=True)
class Worker:
    """A registered worker and its live state (in flight, latency, health)."""

    spec: WorkerSpec
    health: WorkerHealth = field(default_factory=lambda: WorkerHealth(HealthPolicy(), 0.0))
    extract: ExtractPath | None = None
    inflight: int = 0
    latency_ms: float | None = None
    skip_until: float = 0.0
    """Monotonic time before which this worker is not chosen (a 429's Retry-After)."""
    removed: bool = False
    draining: bool = False
    """Takes no new request; removed once its requests in flight are done (`draining.Drainer`)."""
    seq: int = 0
    """The store's number for its latest registration (`StoredWorker.seq`)."""
    engine: EngineLoad | None = None
    """What the engine's own /metrics said at its last reading (None: unknown)."""
    engine_queue: int = 0
    """Requests the engine held beyond ours in flight at that reading (other clients'): what
    load-aware policies add to `inflight`. Ours are counted fresh in `inflight` instead."""
    limit: int | None = field(init=False, default=None)
    """Requests this replica may have in flight to it: its share of `max_concurrency`."""
    id: str = field(init=False)

    def __post_init__(self) -> None:
        self.id = self.spec.worker_id
        self.set_spec(self.spec)

    def set_spec(self, spec: WorkerSpec, replicas: int = 1) -> None:
        """A new registration of the worker; `replicas`: balancer replicas sharing its
        `max_concurrency` (this one included)."""
        self.spec = spec
        self.extract = parse_extract_path(spec.response_extract) if spec.response_extract else None
        self.share(replicas)

    def share(self, replicas: int) -> bool:
        """Split `max_concurrency` between `replicas` (at least 1 each, so a limit below the
        number of replicas is exceeded rather than a worker never used); True if this replica's
        share grew."""
        before = self.limit
        limit = self.spec.max_concurrency
        self.limit = None if limit is None else max(limit // replicas, 1)
        return before is not None and self.limit is not None and self.limit > before

    @property
    def model(self) -> str:
        return self.spec.model_name

    @property
    def status(self) -> WorkerStatus:
        return self.health.status

    def serves(self, endpoint: str) -> bool:
        """Whether the worker takes requests for `endpoint` (a client path)."""
        endpoints = self.spec.endpoints
        return endpoints is None or endpoint in endpoints

    @property
    def shown_status(self) -> ShownStatus:
        """Its status as listed: `draining` while it is, else its health."""
        return "draining" if self.draining else self.health.status

    def set_engine_load(self, load: EngineLoad | None) -> None:
        """A new reading of the engine's load (None: unknown, so nothing is added)."""
        self.engine = load
        depth = load.queue_depth if load is not None else None
        self.engine_queue = 0 if depth is None else max(depth - self.inflight, 0)

    @property
    def at_capacity(self) -> bool:
        limit = self.limit
        return limit is not None and self.inflight >= limit

    def describe(self) -> dict[str, Any]:
        """The listing shown by /api/server/workers, with secret header values redacted."""
        spec = self.spec
        return {
            "id": self.id,
            "model_name": spec.model_name,
            "req_url_template": redact_url(spec.req_url_template),
            "api": spec.api,
            "owner": spec.owner,
            "weight": spec.weight,
            "status": self.shown_status,
            "inflight": self.inflight,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
            "queue_depth": None if self.engine is None else self.engine.queue_depth,
            "kv_cache_usage": None if self.engine is None else self.engine.kv_cache_usage,
            "req_type": spec.req_type,
            "upstream_model": spec.target_model if spec.api == "openai" else None,
            "response_extract": spec.response_extract,
            "header": redact_headers(spec.header),
            "health_url": spec.health_url and redact_url(spec.health_url),
            "timeout": spec.timeout,
            "probe": spec.probe,
            "max_concurrency": spec.max_concurrency,
            "strategy": spec.strategy,
            "fallbacks": spec.fallbacks,
            "endpoints": spec.endpoints,
        }
