"""Time limits that fit LLM generations, against `balancer serve` and workers on 127.0.0.1.

The balancer runs with short limits so each contract shows in about a second: a stream idle
timeout of 0.5 s, a request timeout of 2.5 s, a connect timeout of 0.5 s, Retry-After capped at
1 s.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from balancer.fakes.processes import HOST, BalancerProcess, WorkerProcess, free_port
from tests.e2e.conftest import health_of, register_openai, unique_model
from tests.e2e.rawworker import Answer, back_off_once, completion, raw_worker

CHAT = {"messages": [{"role": "user", "content": "tell me a long story"}]}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BalancerProcess]:
    balancer = BalancerProcess(
        tmp_path_factory.mktemp("time-limits"),
        env={
            "BALANCER_STREAM_IDLE_TIMEOUT": "0.5",
            "BALANCER_REQUEST_TIMEOUT": "2.5",
            "BALANCER_CONNECT_TIMEOUT": "0.5",
            "BALANCER_MAX_RETRY_AFTER": "1",
            "BALANCER_PROBE_INTERVAL": "30",
        },
    )
    balancer.start()
    yield balancer
    balancer.stop()


@pytest.fixture
def client(limited: BalancerProcess) -> Iterator[httpx.Client]:
    with limited.client() as c:
        yield c


def chat(client: httpx.Client, model: str, **fields: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": model, **CHAT, **fields})


def test_a_generation_longer_than_the_stream_idle_timeout_succeeds_in_one_attempt(
    client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    """A non-streamed answer is bounded by the worker's timeout as a whole (default 600 s),
    not by a socket read timeout: nothing arrives while the model generates."""
    model = unique_model()
    worker = register_openai(client, model, spawn("thinker", latency=1.2).url)
    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda _: chat(client, model), range(3)))
    for reply in replies:
        assert reply.status_code == 200, reply.text
        assert reply.headers["X-Balancer-Attempts"] == "1"
    assert health_of(client, model, worker)["status"] != "ejected"


def test_a_streams_first_chunk_may_take_longer_than_the_idle_timeout(
    client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    register_openai(client, model, spawn("slow-prefill", latency=1.2, chunks=4).url)
    reply = chat(client, model, stream=True)
    assert reply.status_code == 200
    assert reply.text.rstrip().endswith("data: [DONE]")


def test_a_stream_that_stalls_ends_with_an_error_event_after_the_idle_timeout(
    client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    worker = spawn("staller", chunks=8)
    worker.control(stall_after=3)
    register_openai(client, model, worker.url, timeout=30)
    started = time.monotonic()
    reply = chat(client, model, stream=True)
    took = time.monotonic() - started
    events = [line for line in reply.text.splitlines() if line.startswith("data:")]
    assert '"error"' in events[-1] and "stopped sending" in events[-1]
    assert "[DONE]" not in reply.text
    assert took < 5  # the idle timeout (0.5 s), not the worker's timeout (30 s)


def test_a_worker_that_trickles_past_its_timeout_is_left_for_another(
    client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    """A worker's `timeout` bounds its whole answer, however steadily its bytes come."""
    model = unique_model()
    slow_answer = Answer(body=completion("too slow"), trickle=0.03)  # about 10 s in all
    with raw_worker(lambda n: slow_answer) as trickler:
        register_openai(client, model, trickler.url, timeout=1, strategy="round_robin")
        register_openai(client, model, spawn("steady").url)
        started = time.monotonic()
        reply = chat(client, model)
        took = time.monotonic() - started
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"].startswith("[steady]")
    assert reply.headers["X-Balancer-Attempts"] == "2"
    assert took < 2.5


def test_the_request_timeout_gives_a_504_during_an_attempt_without_failing_over(
    client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    """The worker's own timeout (30 s) is longer than what is left of the request (2.5 s):
    another worker could not do better, so none is tried, and the slow one is not charged."""
    model = unique_model()
    slow = register_openai(
        client, model, spawn("slow", latency=6).url, timeout=30, strategy="round_robin"
    )
    register_openai(client, model, spawn("fast").url)
    started = time.monotonic()
    reply = chat(client, model)
    took = time.monotonic() - started
    assert reply.status_code == 504
    assert reply.headers["X-Balancer-Attempts"] == "1"
    assert reply.json()["error"]["code"] == "request_timeout"
    assert 2.4 < took < 4.0
    assert health_of(client, model, slow)["passive_failures"] == 0


def test_a_worker_that_cannot_be_connected_to_is_left_after_the_connect_timeout(
    client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    """A listener whose backlog is full: the worker's SYNs go unanswered, as with a host that
    is down behind a firewall."""
    model = unique_model()
    blackhole = socket.socket()
    blackhole.bind((HOST, free_port()))
    blackhole.listen(0)
    port = blackhole.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex((HOST, port))
            fillers.append(filler)
        time.sleep(0.2)
        register_openai(client, model, f"http://{HOST}:{port}", strategy="round_robin")
        register_openai(client, model, spawn("reachable").url)
        started = time.monotonic()
        reply = chat(client, model)
        took = time.monotonic() - started
    finally:
        for s in (*fillers, blackhole):
            s.close()
    assert reply.status_code == 200
    assert reply.headers["X-Balancer-Attempts"] == "2"
    assert took < 2.0


def test_a_retry_after_keeps_a_worker_out_no_longer_than_max_retry_after(
    client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    with raw_worker(back_off_once("3600")) as limited_worker:
        register_openai(client, model, limited_worker.url, strategy="round_robin")
        register_openai(client, model, spawn("spare").url)
        first = chat(client, model)
        assert first.json()["choices"][0]["message"]["content"].startswith("[spare]")
        time.sleep(1.2)
        texts = [chat(client, model).json()["choices"][0]["message"]["content"] for _ in range(3)]
    assert "back" in texts


def test_settings_for_time_limits_are_documented(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name in (
        "BALANCER_CONNECT_TIMEOUT",
        "BALANCER_WORKER_TIMEOUT",
        "BALANCER_STREAM_IDLE_TIMEOUT",
        "BALANCER_REQUEST_TIMEOUT",
        "BALANCER_MAX_RETRY_AFTER",
        "BALANCER_STREAM_USAGE",
    ):
        assert f"`{name}`" in readme, name
