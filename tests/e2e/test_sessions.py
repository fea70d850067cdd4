"""Sticky sessions through a real balancer: a session keeps its worker, and moves (once, and
stays) when that worker goes away."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from balancer.fakes.processes import WorkerProcess
from tests.e2e.conftest import register_openai, unique_model


def answered_by(client: httpx.Client, model: str, **request: Any) -> str:
    headers = request.pop("headers", {})
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **request}
    reply = client.post("/v1/chat/completions", json=body, headers=headers)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["message"]["content"]).split()[0]


def test_a_session_sticks_and_moves_when_its_worker_goes_away(
    client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    workers = {f"[s{i}]": spawn(f"s{i}") for i in range(3)}
    for worker in workers.values():
        register_openai(client, model, worker.url, strategy="round_robin")
    session = {"headers": {"X-Session-ID": "conversation-1"}}
    homes = Counter(answered_by(client, model, **session) for _ in range(9))
    assert len(homes) == 1, homes
    # OpenAI's `user` field is a session too; without either, round robin goes round.
    assert len(Counter(answered_by(client, model, user="alice") for _ in range(6))) == 1
    assert len(Counter(answered_by(client, model) for _ in range(6))) == 3

    home = next(iter(homes))
    workers[home].stop()
    moved = Counter(answered_by(client, model, **session) for _ in range(9))
    assert home not in moved and len(moved) == 1, moved
