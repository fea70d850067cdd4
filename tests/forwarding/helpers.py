"""Workers on a FakeTransport, and what they answer, for tests of the request path."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson

from balancer.events import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    Events,
    Panic,
    Queued,
    RequestRecord,
    Retried,
)
from balancer.fakes.transport import FakeResponse, FakeTransport, SentRequest
from balancer.forwarding import sse
from balancer.forwarding.lease import Lease
from balancer.forwarding.transport import TransportError
from balancer.registry import Worker, WorkerRegistry, WorkerSpec, parse_spec
from balancer.types import Clock

E = TypeVar("E")
Answer = FakeResponse | TransportError | Callable[[SentRequest], Awaitable[FakeResponse]]
"""What a fake worker does with a request: answer, fail to be reached, or run a function."""


def openai_spec(host: str, model: str = "m", **fields: Any) -> WorkerSpec:
    """An OpenAI-compatible worker of `model` at http://<host>/v1."""
    return parse_spec(
        {"model_name": model, "api": "openai", "req_url_template": f"http://{host}/v1", **fields}
    )


async def add_workers(
    registry: WorkerRegistry, *hosts: str, model: str = "m", **fields: Any
) -> list[Worker]:
    """Register an OpenAI worker of `model` per host, in order."""
    workers = []
    for host in hosts:
        worker, _ = await registry.register(openai_spec(host, model, **fields))
        workers.append(worker)
    return workers


def host_of(request: SentRequest) -> str:
    return urlsplit(request.url).hostname or ""


def by_host(answers: Mapping[str, Answer]) -> FakeTransport:
    """A transport on which each host answers as `answers` says."""

    async def handler(request: SentRequest) -> FakeResponse:
        answer = answers[host_of(request)]
        if isinstance(answer, TransportError):
            raise answer
        if isinstance(answer, FakeResponse):
            return answer
        return await answer(request)

    return FakeTransport(handler)


def hosts_sent(transport: FakeTransport) -> list[str]:
    return [host_of(request) for request in transport.sent]


def completion(text: str, *, prompt_tokens: int = 3, completion_tokens: int = 5) -> FakeResponse:
    """A chat completion answering `text`, with its usage."""
    return FakeResponse(
        json={
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def status(code: int, *, headers: Mapping[str, str] | None = None) -> FakeResponse:
    return FakeResponse(code, json={"error": {"message": f"status {code}"}}, headers=headers)


def streamed(
    *chunks: bytes, error: TransportError | None = None, stall: bool = False
) -> FakeResponse:
    """An SSE stream of `chunks`, then broken off with `error` or stalled."""
    return FakeResponse(chunks=chunks, error=error, stall=stall)


CONNECT_REFUSED = TransportError("connect", "cannot connect to the worker: refused")
TIMED_OUT = TransportError("timeout", "timed out waiting for the worker")
RESET = TransportError("reset", "connection to the worker failed: reset by peer")


class SilentStream(FakeResponse):
    """A 200 stream that ends, or breaks off with `failure`, before its first byte (a
    FakeResponse always yields its body, empty or not, as a first chunk)."""

    def __init__(self, failure: TransportError | None = None) -> None:
        super().__init__(200, headers={"Content-Type": sse.CONTENT_TYPE})
        self.failure = failure

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.failure is not None:
            raise self.failure
        nothing: list[bytes] = []
        for chunk in nothing:
            yield chunk


# SSE chunks as an OpenAI worker streams them.


def role_chunk() -> bytes:
    return sse.json_event(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    )


def content_chunk(text: str) -> bytes:
    return sse.json_event({"choices": [{"index": 0, "delta": {"content": text}}]})


def usage_chunk(prompt_tokens: int = 3, completion_tokens: int = 5) -> bytes:
    """The usage-only chunk a worker sends last when asked for `include_usage`."""
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return sse.json_event({"choices": [], "usage": usage})


def data_events(stream: bytes) -> list[bytes]:
    """The `data:` payloads of an SSE stream, in order."""
    return [event.removeprefix(b"data: ") for event in stream.split(b"\n\n") if event]


def new_record() -> RequestRecord:
    return RequestRecord(api="openai", started=time.perf_counter(), request_id="req-1")


def lease_on(worker: Worker, *, clock: Clock, events: Events | None = None) -> Lease:
    """A worker's slot for one attempt, as the forwarder takes it."""
    return Lease(worker, new_record(), clock=clock, events=events or Events())


class Heard:
    """Every event the request path sent, in order."""

    def __init__(self, events: Events) -> None:
        self.events = events
        self.all: list[object] = []
        events.attempt_started.connect(self._hear)
        events.attempt_succeeded.connect(self._hear)
        events.attempt_failed.connect(self._hear)
        events.retried.connect(self._hear)
        events.queued.connect(self._hear)
        events.panic.connect(self._hear)

    def _hear(
        self,
        params: AttemptStarted | AttemptSucceeded | AttemptFailed | Retried | Queued | Panic,
    ) -> None:
        self.all.append(params)

    def of(self, kind: type[E]) -> list[E]:
        return [params for params in self.all if isinstance(params, kind)]


def json_of(data: bytes) -> Any:
    return orjson.loads(data)
