"""Failover with real worker processes under a bounded load: a killed process, a connection
dropped before the first byte. Selection and failover are specified in-process, in
tests/test_balancing.py."""

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from balancer.fakes.processes import BalancerProcess, WorkerProcess
from tests.e2e.conftest import openai_registration, unique_model


class Load:
    """`clients` threads sending requests in a loop until stopped: a bounded, steady load."""

    def __init__(self, url: str, model: str, clients: int = 8, limit: int = 5000) -> None:
        self.url, self.model = url, model
        self.results: list[tuple[float, int, str]] = []  # (time, status, answer or error)
        self._stop = threading.Event()
        self._limit = limit
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set() and len(self.results) < self._limit:
                reply = client.post(
                    "/api/v1/chat/completions", json={"input": "load", "model_name": self.model}
                )
                body = reply.json()
                self.results.append(
                    (time.monotonic(), reply.status_code, body.get("result") or body.get("msg", ""))
                )

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def shares(self, since: float = 0.0) -> Counter[str]:
        return Counter(
            answer.split("]")[0].strip("[")
            for t, status, answer in self.results
            if t >= since and status == 200
        )

    def errors(self) -> list[tuple[float, int, str]]:
        return [r for r in self.results if r[1] != 200]


def sse_content(text: str) -> str:
    """The assistant's text from a chat completion SSE stream."""
    parts = []
    for line in text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                parts.append(choice.get("delta", {}).get("content") or "")
    return "".join(parts)


def register(client: httpx.Client, model: str, worker: WorkerProcess, **fields: Any) -> None:
    reply = client.post("/api/server/register", json=openai_registration(model, worker, **fields))
    assert reply.status_code == 200, reply.text


def test_a_worker_killed_mid_load_gives_zero_client_errors(
    balancer: BalancerProcess, client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    victim, a, b = spawn("victim"), spawn("a"), spawn("b")
    for worker in (victim, a, b):
        register(client, model, worker, strategy="round_robin")
    with Load(balancer.url, model) as load:
        time.sleep(1)
        victim.signal(signal.SIGKILL)
        time.sleep(2)
    assert len(load.results) > 100
    assert load.errors() == []
    assert load.shares()["victim"] > 0  # it did serve before it failed


def test_a_stream_that_fails_before_its_first_byte_fails_over(
    balancer: BalancerProcess, client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    broken, good = spawn("broken"), spawn("good")
    broken.control(break_after=0)  # headers, then the connection drops before any chunk
    register(client, model, broken, strategy="round_robin")
    register(client, model, good)
    for _ in range(4):
        reply = client.post(
            "/v1/chat/completions",
            json={"model": model, "stream": True, "messages": [{"role": "user", "content": "s"}]},
        )
        assert reply.status_code == 200
        assert sse_content(reply.text) == "[good] s"
        assert reply.text.rstrip().endswith("data: [DONE]")
