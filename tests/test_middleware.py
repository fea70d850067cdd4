"""The request context: an id for every call (the client's, or ours), sent on to the worker and
back to the client, and one access log line per call."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog

from balancer.fakes.transport import FakeResponse, FakeTransport, SentRequest
from balancer.logging import configure_logging
from tests.inprocess import InProcess, in_process

pytestmark = pytest.mark.anyio

OUR_ID = re.compile(r"[0-9a-f]{32}")
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def chat_completion(request: SentRequest) -> FakeResponse:
    return FakeResponse(
        json={"object": "chat.completion", "choices": [{"message": {"content": "hello"}}]}
    )


def with_context() -> Any:
    """Captured log events with the request's context (request id, model, worker) merged in."""
    return structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars])


@pytest.fixture
def service_log() -> Iterator[io.StringIO]:
    """What the service's own log pipeline (`configure_logging`, JSON) writes, in a buffer."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(log_format="json", level="info")
    buffer = io.StringIO()
    # Not cached: later tests reconfigure structlog (capture_logs) and must be heard.
    structlog.configure(
        logger_factory=structlog.WriteLoggerFactory(file=buffer), cache_logger_on_first_use=False
    )
    try:
        yield buffer
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)


async def test_a_valid_request_id_is_kept_and_sent_on_to_the_worker() -> None:
    transport = FakeTransport(chat_completion)
    async with in_process(transport=transport) as lb:
        await lb.register_openai("m", "http://w1")
        reply = await lb.client.post(
            "/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "trace-123"}
        )
    assert reply.status_code == 200
    assert reply.headers["X-Request-ID"] == "trace-123"
    [sent] = transport.sent
    assert sent.headers["X-Request-ID"] == "trace-123"


async def test_each_attempt_carries_the_same_request_id() -> None:
    async def fail_then_answer(request: SentRequest) -> FakeResponse:
        if "w1" in request.url:
            return FakeResponse(503, json={"error": {"message": "busy"}})
        return await chat_completion(request)

    transport = FakeTransport(fail_then_answer)
    async with in_process(transport=transport) as lb:
        await lb.register_openai("m", "http://w1", strategy="round_robin")
        await lb.register_openai("m", "http://w2")
        reply = await lb.client.post(
            "/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "trace-9"}
        )
    assert reply.headers["X-Balancer-Attempts"] == "2"
    assert [sent.headers["X-Request-ID"] for sent in transport.sent] == ["trace-9", "trace-9"]


@pytest.mark.parametrize(
    "given",
    ["", "has space", "x" * 129, "tab\there", "naïve"],
    ids=["empty", "space", "too-long", "control", "non-ascii"],
)
async def test_an_invalid_request_id_is_replaced_by_ours(given: str) -> None:
    transport = FakeTransport(chat_completion)
    async with in_process(transport=transport) as lb:
        await lb.register_openai("m", "http://w1")
        reply = await lb.client.post(
            "/v1/chat/completions", json=CHAT, headers=[(b"X-Request-ID", given.encode())]
        )
    ours = reply.headers["X-Request-ID"]
    assert OUR_ID.fullmatch(ours)
    assert transport.sent[0].headers["X-Request-ID"] == ours


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/server/workers"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("POST", "/api/v1/chat/completions"),  # a 400
        ("GET", "/v1/chat/completions"),  # a 405
        ("GET", "/nowhere"),  # a 404, answered by FastAPI
        ("GET", "/openapi.json"),
    ],
)
async def test_every_reply_carries_a_fresh_request_id(
    lb: InProcess, method: str, path: str
) -> None:
    first = await lb.client.request(method, path)
    second = await lb.client.request(method, path)
    assert OUR_ID.fullmatch(first.headers["X-Request-ID"])
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


async def test_an_inference_call_is_one_access_line_with_its_model_and_worker(
    lb: InProcess,
) -> None:
    worker = await lb.register_openai("m", lb.worker("w1"))
    with with_context() as logs:
        reply = await lb.client.post(
            "/api/v1/chat/completions",
            json={"input": "x", "model_name": "m"},
            headers={"X-Request-ID": "trace-123"},
        )
    assert reply.headers["X-Balancer-Worker"] == worker
    [line] = [e for e in logs if e["event"] == "request"]
    assert line["request_id"] == "trace-123"
    assert line["method"] == "POST"
    assert line["path"] == "/api/v1/chat/completions"
    assert line["status"] == 200
    assert line["model"] == "m"
    assert line["worker"] == worker
    assert line["attempts"] == 1
    assert isinstance(line["latency_ms"], float)
    assert line["log_level"] == "info"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/server/workers", 200),
        ("POST", "/api/server/offline", 415),
        ("GET", "/v1/models/extra", 404),
        ("PUT", "/v1/models", 405),
    ],
)
async def test_other_calls_are_one_access_line_each_with_their_status(
    lb: InProcess, method: str, path: str, status: int
) -> None:
    with with_context() as logs:
        reply = await lb.client.request(method, path)
    assert reply.status_code == status
    [line] = [e for e in logs if e["event"] == "request"]
    assert (line["method"], line["path"], line["status"]) == (method, path, status)
    assert line["request_id"] == reply.headers["X-Request-ID"]
    assert "model" not in line
    assert "worker" not in line


async def test_a_failed_inference_call_is_logged_with_its_status_and_model(
    lb: InProcess,
) -> None:
    await lb.register_openai("m", lb.worker("w1", fail_rate=1.0, fail_status=500))
    with with_context() as logs:
        reply = await lb.client.post(
            "/api/v1/chat/completions", json={"input": "x", "model_name": "m"}
        )
    assert reply.status_code == 503
    [line] = [e for e in logs if e["event"] == "request"]
    assert line["status"] == 503
    assert line["model"] == "m"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_probes_and_scrapes_are_not_logged(lb: InProcess, path: str) -> None:
    with structlog.testing.capture_logs() as logs:
        reply = await lb.client.get(path)
    assert reply.status_code == 200
    assert [e for e in logs if e["event"] == "request"] == []


async def test_secret_headers_never_reach_the_log(lb: InProcess, service_log: io.StringIO) -> None:
    await lb.register_openai(
        "m", lb.worker("w1"), header={"Authorization": "Bearer sk-do-not-log", "X-Trace": "t"}
    )
    await lb.client.post(
        "/api/v1/chat/completions",
        json={"input": "x", "model_name": "m"},
        headers={"Authorization": "Bearer sk-client-secret"},
    )
    text = service_log.getvalue()
    assert "sk-do-not-log" not in text
    assert "sk-client-secret" not in text
    lines = [orjson.loads(line) for line in text.splitlines()]
    [registered] = [e for e in lines if e["event"] == "worker_registered"]
    assert registered["header"] == {"Authorization": "***", "X-Trace": "t"}
    requests = [e for e in lines if e["event"] == "request"]
    assert [e["path"] for e in requests] == ["/api/server/register", "/api/v1/chat/completions"]
    assert all(OUR_ID.fullmatch(e["request_id"]) for e in requests)
