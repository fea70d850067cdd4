"""The OpenAI-compatible API over real sockets: what only the wire shows (a worker that breaks
off or stalls a stream, a client that hangs up, a body refused before it is read). The API's
behaviour is specified in-process, in tests/routes/test_openai.py."""

import time

import httpx
import openai
import pytest

from balancer.fakes.processes import BalancerProcess, WorkerProcess
from tests.e2e.conftest import openai_registration, unique_model


def test_a_stream_broken_by_the_worker_ends_with_an_error_the_sdk_raises(
    client: httpx.Client, balancer: BalancerProcess, fresh_worker: WorkerProcess
) -> None:
    model = unique_model()
    client.post("/api/server/register", json=openai_registration(model, fresh_worker))
    fresh_worker.control(break_after=3, chunks=8)
    sdk = openai.OpenAI(base_url=f"{balancer.url}/v1", api_key="x", max_retries=0)
    stream = sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "a long answer"}], stream=True
    )
    with pytest.raises(openai.APIError, match="broke off the stream"):
        for _ in stream:
            pass


def test_an_oversized_body_is_refused_before_it_is_read(balancer: BalancerProcess) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", balancer.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: 67108864\r\n\r\n{"
        )
        reply = b""
        while b"}}" not in reply:  # the head and the JSON body may arrive apart
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413")
    assert b"payload_too_large" in reply


def test_a_client_leaving_mid_stream_frees_the_workers_slot(
    client: httpx.Client, balancer: BalancerProcess, fresh_worker: WorkerProcess
) -> None:
    model = unique_model()
    client.post("/api/server/register", json=openai_registration(model, fresh_worker))
    fresh_worker.control(chunks=50, chunk_delay=0.1)
    with httpx.stream(
        "POST",
        f"{balancer.url}/v1/chat/completions",
        timeout=10,
        json={
            "model": model,
            "stream": True,
            "messages": [{"role": "user", "content": "a long story " * 20}],
        },
    ) as reply:
        chunks = reply.iter_bytes()
        next(chunks)  # the first chunk; leaving the block then hangs up
        [row] = client.get("/api/server/workers", params={"model_name": model}).json()["data"]
        assert row["inflight"] == 1
    deadline = time.monotonic() + 5
    while True:
        [row] = client.get("/api/server/workers", params={"model_name": model}).json()["data"]
        if row["inflight"] == 0:
            break
        assert time.monotonic() < deadline, "the slot was never given back"
        time.sleep(0.1)
