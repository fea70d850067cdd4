"""Every event of a running balancer: one named signal each, with a frozen parameter object.

The request path, the registry and the probes send; metrics, health, selection and the probe
scheduler receive; `balancer.wiring` connects them, all in one place. Like aiohttp's
`TraceConfig`, a sender builds its parameters only when somebody listens. Receivers are plain
functions called in order, on the event loop: they must not block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

from balancer.types import ClientApi

if TYPE_CHECKING:
    from balancer.errors import UpstreamError
    from balancer.registry.models import Worker
    from probes.checks import ProbeResult
    from probes.health import Transition

P = TypeVar("P")

Change = Literal["registered", "updated", "removed"]
HealthSource = Literal["probe", "passive"]


class Signal(Generic[P]):
    __slots__ = ("_receivers", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._receivers: list[Callable[[P], None]] = []

    def connect(self, receiver: Callable[[P], None]) -> None:
        self._receivers.append(receiver)

    def __bool__(self) -> bool:
        return bool(self._receivers)

    def send(self, params: P) -> None:
        for receiver in self._receivers:
            receiver(params)

    def __repr__(self) -> str:
        return f"<Signal {self.name}: {len(self._receivers)} receivers>"


@dataclass(slots=True)
class RequestRecord:
    """What one inference request did, filled in along the request path and sent with
    `request_finished`. Only the forwarder and the relay write to it."""

    api: ClientApi
    started: float
    """perf_counter() when the request arrived."""
    request_id: str | None = None
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
    worker: Worker
    result: ProbeResult


@dataclass(frozen=True, slots=True)
class HealthChanged:
    worker: Worker
    transition: Transition
    source: HealthSource


@dataclass(frozen=True, slots=True)
class RegistryChanged:
    change: Change
    worker: Worker
    model_gone: bool = False
    """The worker was its model's last: whatever is kept per model can go too."""


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """An inference request sent its last byte (or its client left) with `status`."""

    record: RequestRecord
    status: int
    finished_at: float
    """perf_counter() at the end."""


class Events:
    """The signals of one balancer."""

    __slots__ = (
        "attempt_failed",
        "attempt_started",
        "attempt_succeeded",
        "health_changed",
        "panic",
        "probed",
        "queued",
        "registry_changed",
        "request_finished",
        "retried",
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
