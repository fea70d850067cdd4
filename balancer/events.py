"""Every event of a running balancer: one named signal each, with a frozen parameter object.

The request path, the registry and the probes send; metrics, health, selection and the probe
scheduler receive; `balancer.wiring` connects them, all in one place. Like aiohttp's
`TraceConfig`, a sender builds its parameters only when somebody listens. Receivers are plain
functions called in order, on the event loop: they must not block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from balancer.errors import UpstreamError
from balancer.fleet import ReplicasChanged
from balancer.registry.follow import StoreAvailability
from balancer.registry.index import RegistryChanged
from balancer.registry.models import Worker
from balancer.signals import Signal
from balancer.types import ClientApi, WorkerStatus

HealthSource = Literal["probe", "passive"]


@dataclass(slots=True)
class RequestRecord:
    """What one inference request did, filled in along the request path and sent with
    `request_finished`. Only the forwarder and the relay write to it."""

    api: ClientApi
    started: float
    """perf_counter() when the request arrived."""
    request_id: str | None = None
    endpoint: str = ""
    """The route's bounded label: its path, or `other` for the /v1/ pass-through."""
    model: str | None = None
    """Set once the model is known to be registered: bounded label values only."""
    worker: str | None = None
    upstream_seconds: float = 0.0
    """Time spent waiting on workers: every attempt up to its answer (first byte for streams)."""
    first_byte_at: float | None = None
    """perf_counter() when a stream's first byte was ready to send to the client."""
    ttft: float | None = None
    """Time to first token of a stream, as the client saw it."""
    input_tokens: int | None = None
    output_tokens: int | None = None
    tokens_estimated: bool = False
    generation_seconds: float | None = None
    """Time the worker spent generating the output tokens, for tokens per second."""
    routing_key: str | None = None
    """The prompt's text, for a policy that routes on it (`cache_aware`); never logged."""
    session: str | None = None
    """The client's session (`X-Session-ID`, or OpenAI's `user`): sticks to one worker."""

    def tokens(self, prompt: int, completion: int, *, estimated: bool) -> None:
        self.input_tokens = prompt
        self.output_tokens = completion
        self.tokens_estimated = estimated


@dataclass(frozen=True, slots=True)
class AttemptStarted:
    worker: Worker


@dataclass(frozen=True, slots=True)
class AttemptSucceeded:
    """A worker answered (a 4xx from it counts: it is alive and said no). `seconds` is to the
    first byte for streams, the whole call otherwise."""

    worker: Worker
    seconds: float
    answered: bool = True
    """False for a refusal of the caller's own mistake (a 400, a 422): the worker is alive,
    but how fast it said no is no measure of how fast it answers."""


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    """A worker failed after `seconds`: could not connect, timed out, broke a stream, 5xx or
    429."""

    worker: Worker
    error: UpstreamError
    seconds: float


@dataclass(frozen=True, slots=True)
class Retried:
    """A failed attempt is being retried on another worker; `reason` names the failure."""

    model: str
    reason: str


@dataclass(frozen=True, slots=True)
class Queued:
    """A request waited `seconds` for a worker below its max_concurrency."""

    model: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Panic:
    """Every worker of the model is ejected, so one was chosen anyway."""

    model: str
    worker: Worker


@dataclass(frozen=True, slots=True)
class Probed:
    """A health probe of the worker ended: `ok` or not (`error` says why), after `seconds`."""

    worker: Worker
    ok: bool
    seconds: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class HealthChanged:
    """The worker's health state changed, because of a probe or of live traffic."""

    worker: Worker
    old: WorkerStatus
    new: WorkerStatus
    reason: str
    source: HealthSource


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """An inference request sent its last byte (or its client left) with `status`."""

    record: RequestRecord
    status: int
    finished_at: float
    """perf_counter() at the end."""


class Events:
    """The signals of one balancer. `RegistryChanged` and `StoreAvailability` are defined with
    the registry (which sends them, and sits below this module), `ReplicasChanged` with the
    fleet; every other parameter object is here."""

    __slots__ = (
        "attempt_failed",
        "attempt_started",
        "attempt_succeeded",
        "health_changed",
        "panic",
        "probed",
        "queued",
        "registry_changed",
        "replicas_changed",
        "request_finished",
        "retried",
        "store_availability",
    )

    def __init__(self) -> None:
        self.attempt_started = Signal[AttemptStarted]("attempt_started")
        self.attempt_succeeded = Signal[AttemptSucceeded]("attempt_succeeded")
        self.attempt_failed = Signal[AttemptFailed]("attempt_failed")
        self.retried = Signal[Retried]("retried")
        self.queued = Signal[Queued]("queued")
        self.panic = Signal[Panic]("panic")
        self.probed = Signal[Probed]("probed")
        self.health_changed = Signal[HealthChanged]("health_changed")
        self.registry_changed = Signal[RegistryChanged]("registry_changed")
        self.request_finished = Signal[RequestFinished]("request_finished")
        self.store_availability = Signal[StoreAvailability]("store_availability")
        self.replicas_changed = Signal[ReplicasChanged]("replicas_changed")


__all__ = [
    "AttemptFailed",
    "AttemptStarted",
    "AttemptSucceeded",
    "Events",
    "HealthChanged",
    "Panic",
    "Probed",
    "Queued",
    "RegistryChanged",
    "ReplicasChanged",
    "RequestFinished",
    "RequestRecord",
    "Retried",
    "Signal",
    "StoreAvailability",
]
