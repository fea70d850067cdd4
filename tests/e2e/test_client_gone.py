"""A client that leaves before its answer: the balancer stops working for it, through real
uvicorn on 127.0.0.1 (which does not cancel a request whose client is gone)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import httpx

from balancer.fakes.processes import HOST, BalancerProcess, WorkerProcess
from tests.e2e.conftest import register_openai, unique_model


def inflight(balancer: BalancerProcess, model: str) -> int:
    workers = httpx.get(
        f"{balancer.url}/api/server/workers", params={"model_name": model}, timeout=5
    ).json()["data"]
    return int(sum(w["inflight"] for w in workers))


def requests_counted(balancer: BalancerProcess, model: str, code: str) -> float:
    total = 0.0
    for line in httpx.get(f"{balancer.url}/metrics", timeout=5).text.splitlines():
        wanted = f'model="{model}"' in line and f'code="{code}"' in line
        if line.startswith("balancer_requests_total{") and wanted:
            total += float(line.rsplit(" ", 1)[1])
    return total


def send_and_leave(balancer: BalancerProcess, body: bytes, *, send_all: bool, wait: float) -> None:
    with socket.create_connection((HOST, balancer.port), timeout=5) as sock:
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head + (body if send_all else body[: len(body) // 2]))
        time.sleep(wait)


def test_a_client_that_leaves_during_a_generation_frees_the_worker_at_once(
    balancer: BalancerProcess, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    with balancer.client() as client:
        register_openai(client, model, spawn("slow", latency=5).url)
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "x"}]}).encode()
    send_and_leave(balancer, body, send_all=True, wait=0.5)
    deadline = time.monotonic() + 1.5
    while inflight(balancer, model) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert inflight(balancer, model) == 0  # not the 5 s of the generation
    assert requests_counted(balancer, model, "499") == 1


def test_a_client_that_leaves_while_sending_its_body_is_no_server_error(
    balancer: BalancerProcess,
) -> None:
    model = unique_model()
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "x" * 500}]})
    send_and_leave(balancer, body.encode(), send_all=False, wait=0.2)
    time.sleep(0.3)
    log = balancer.log.read_text()
    assert "unhandled_error" not in log
    assert requests_counted(balancer, "_unknown", "500") == 0
