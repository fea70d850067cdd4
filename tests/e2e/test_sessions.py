"""Sticky sessions through a real balancer: a session keeps its worker, and moves (once, and
stays) when that worker goes away."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from balancer.fakes.processes import BalancerProcess, WorkerProcess
from tests.e2e.conftest import health_of, register_openai, unique_model


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


@pytest.fixture(scope="module")
def prober(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BalancerProcess]:
    balancer = BalancerProcess(
        tmp_path_factory.mktemp("sessions"), env={"BALANCER_PROBE_INTERVAL": "0.2"}
    )
    balancer.start()
    yield balancer
    balancer.stop()


def test_a_session_moves_when_its_worker_is_ejected_and_stays_moved_after(
    prober: BalancerProcess, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    workers = {f"[j{i}]": spawn(f"j{i}") for i in range(3)}
    with prober.client() as client:
        ids = {
            name: register_openai(client, model, w.url, strategy="round_robin")
            for name, w in workers.items()
        }
        session = {"headers": {"X-Session-ID": "conversation-2"}}
        home = answered_by(client, model, **session)
        # Its probes fail (it still answers requests): ejected, it is chosen no more.
        workers[home].control(health_status=500)
        deadline = time.monotonic() + 10
        while health_of(client, model, ids[home])["status"] != "ejected":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        moved = Counter(answered_by(client, model, **session) for _ in range(6))
        assert home not in moved and len(moved) == 1, moved
        # Back in service, it does not get the session back: its cache is elsewhere now.
        workers[home].control(health_status=200)
        while health_of(client, model, ids[home])["status"] != "healthy":
            assert time.monotonic() < deadline + 10
            time.sleep(0.05)
        assert Counter(answered_by(client, model, **session) for _ in range(6)) == moved
