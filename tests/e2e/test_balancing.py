"""Failover with real worker processes under a bounded load: a killed process, a connection
dropped before the first byte. Selection and failover are specified in-process, in
tests/test_balancing.py."""

import json
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from balancer.fakes.processes import BalancerProcess, WorkerProcess
from tests.e2e.conftest import openai_registration, unique_model
from tests.e2e.load import Load


def steady_load(url: str, model: str) -> Load:
    """8 clients asking `model` through the OperateGPT API: a bounded, steady load."""
    body = {"input": "load", "model_name": model}
    return Load(url, body, path="/api/v1/chat/completions", clients=8, limit=5000)


def shares(load: Load) -> Counter[str]:
    """The 200 answers, by the worker that gave them (the fake worker's `[name]`)."""
    return Counter(
        json.loads(answer.text)["result"].split("]")[0].strip("[")
        for answer in load.answers
        if answer.status == 200
    )


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
    with steady_load(balancer.url, model) as load:
        time.sleep(1)
        victim.signal(signal.SIGKILL)
        time.sleep(2)
    assert len(load.answers) > 100
    assert load.failures == []
    assert shares(load)["victim"] > 0  # it did serve before it failed


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
