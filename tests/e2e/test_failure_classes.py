"""What a worker's answer means, against `balancer serve` and workers on 127.0.0.1: a worker
that cannot serve is left for another and charged; the caller's own mistakes are relayed; when
nothing can serve, the client hears which model and why; connections a worker dropped while idle
cost nothing."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from balancer.fakes.processes import BalancerProcess, WorkerProcess
from tests.e2e.conftest import health_of, register_openai, unique_model
from tests.e2e.rawworker import Answer, back_off_once, completion, raw_worker

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def test_a_worker_answering_401_at_once_gets_almost_no_traffic_and_its_failures_count(
    balancer: BalancerProcess, spawn: Callable[..., WorkerProcess]
) -> None:
    """A revoked key answers fastest of all: under least_latency it must not win. Each 401 is a
    failure, counted as a slow sample, so the worker is tried again only tens of seconds later;
    it is ejected if enough of the first requests reached it at once (how many do depends on
    how the requests spread in time, so this does not ask for it)."""
    model = unique_model()
    revoked, good = spawn("revoked"), spawn("good", latency=0.1)
    revoked.control(fail_rate=1.0, fail_status=401, fail_fast=True)
    with balancer.client() as client:
        bad = register_openai(client, model, revoked.url, strategy="least_latency")
        register_openai(client, model, good.url)

        def ask(_: int) -> httpx.Response:
            with balancer.client() as own:
                return own.post("/v1/chat/completions", json={"model": model, **CHAT})

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(ask, range(50)))
        assert [r.status_code for r in replies] == [200] * 50
        assert all(r.json()["choices"][0]["message"]["content"] == "[good] hi" for r in replies)
        tried = revoked.served().get("/v1/chat/completions", 0)
        assert 1 <= tried <= 10
        health = health_of(client, model, bad)
        assert health["status"] == "ejected" or health["passive_failures"] == tried


def test_when_nothing_can_serve_both_apis_answer_503_naming_the_model_and_the_worker(
    client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    broken = spawn("broken")
    broken.control(fail_rate=1.0, fail_status=500)
    worker = register_openai(client, model, broken.url)
    openai_reply = client.post("/v1/chat/completions", json={"model": model, **CHAT})
    seed_reply = client.post("/api/v1/chat/completions", json={"model_name": model, "input": "x"})
    assert (openai_reply.status_code, seed_reply.status_code) == (503, 503)
    for message in (openai_reply.json()["error"]["message"], seed_reply.json()["msg"]):
        assert message.startswith(f"model {model}: ")
        assert f"worker {worker} answered HTTP 500" in message
        assert broken.url not in message and "127.0.0.1" not in message


def test_the_callers_own_mistake_is_relayed_unchanged_and_not_retried(
    client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    first, second = spawn("first"), spawn("second")
    register_openai(client, model, first.url)
    register_openai(client, model, second.url)
    reply = client.post("/v1/chat/completions", json={"model": model, "messages": []})
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == "messages is required"
    assert reply.headers["X-Balancer-Attempts"] == "1"


def test_a_retry_after_that_is_no_number_is_ignored(
    client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    """`Retry-After: nan` once took a worker out for ever."""

    model = unique_model()
    with raw_worker(back_off_once("nan")) as odd:
        register_openai(client, model, odd.url, strategy="round_robin")
        register_openai(client, model, spawn("spare").url)
        texts = [
            client.post("/v1/chat/completions", json={"model": model, **CHAT}).json()["choices"][0][
                "message"
            ]["content"]
            for _ in range(4)
        ]
    assert "back" in texts


def test_a_connection_the_worker_dropped_while_idle_is_sent_again_without_charge(
    client: httpx.Client,
) -> None:
    """The worker answers once per connection, then drops the kept-alive connection the moment
    the next request arrives on it, without announcing it (no `Connection: close`)."""
    model = unique_model()
    with raw_worker(lambda n: Answer(body=completion("ok")), one_request_per_connection=True) as w:
        worker = register_openai(client, model, w.url)
        replies = [
            client.post("/v1/chat/completions", json={"model": model, **CHAT}) for _ in range(8)
        ]
        dropped = w.dropped
    assert [r.status_code for r in replies] == [200] * 8
    assert all(r.headers["X-Balancer-Attempts"] == "1" for r in replies)
    assert dropped >= 3  # the race really happened
    health = health_of(client, model, worker)
    assert health["status"] != "ejected"
    assert health["passive_failures"] == 0


def test_a_connection_that_breaks_while_the_worker_works_is_not_sent_again(
    client: httpx.Client,
) -> None:
    """A crash mid-generation is not a stale connection: sending it again could run the
    generation twice, so it is the worker's failure."""
    model = unique_model()
    handler = lambda n: Answer(body=completion("ok"))  # noqa: E731
    with raw_worker(handler, one_request_per_connection=True, drop_after=0.4) as w:
        register_openai(client, model, w.url)
        first = client.post("/v1/chat/completions", json={"model": model, **CHAT})
        second = client.post("/v1/chat/completions", json={"model": model, **CHAT})
        dropped, answered = w.dropped, w.requests
    assert first.status_code == 200
    assert second.status_code == 503  # its only worker broke off
    assert (answered, dropped) == (1, 1)  # the broken request reached the worker once
