"""Selection and failover seen through the app: which worker serves, what is retried, what the
client gets when nothing can serve. In-process; the e2e suite keeps a killed worker process."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from tests.inprocess import InProcess, in_process

pytestmark = pytest.mark.anyio


async def ask(lb: InProcess, model: str, prompt: str = "x") -> httpx.Response:
    return await lb.client.post(
        "/api/v1/chat/completions", json={"input": prompt, "model_name": model}
    )


def who(reply: httpx.Response) -> str:
    """The fake worker that answered, from its answer "[name] prompt"."""
    result: str = reply.json()["result"]
    return result.split("]")[0].strip("[")


async def test_weighted_splits_three_to_one(lb: InProcess) -> None:
    await lb.register_openai("m", lb.worker("heavy"), weight=3, strategy="weighted")
    await lb.register_openai("m", lb.worker("light"), weight=1)
    answers = Counter([who(await ask(lb, "m")) for _ in range(80)])
    assert answers == {"heavy": 60, "light": 20}  # smooth weighted round robin is exact


async def test_least_latency_prefers_the_fast_worker_and_follows_it_when_it_slows(
    lb: InProcess,
) -> None:
    await lb.register_openai("m", lb.worker("fast", latency=0.001), strategy="least_latency")
    await lb.register_openai("m", lb.worker("slow", latency=0.02))
    fast, slow = lb.fleet.workers["fast"], lb.fleet.workers["slow"]
    # A worker without a latency sample costs as much as its siblings, so it gets tried: wait
    # until both have one.
    chat = "/v1/chat/completions"
    while chat not in fast.served or chat not in slow.served:
        await ask(lb, "m")
    first = Counter([who(await ask(lb, "m")) for _ in range(10)])
    assert first["fast"] >= 8, first
    fast.behaviour.latency = 0.05  # the fast one slows down: its next answer counts at once
    later = Counter([who(await ask(lb, "m")) for _ in range(10)])
    assert later["slow"] >= 8, later


async def test_a_worker_that_starts_failing_mid_load_costs_the_clients_nothing(
    lb: InProcess,
) -> None:
    for name in ("victim", "a", "b"):
        await lb.register_openai("m", lb.worker(name, latency=0.002), strategy="round_robin")
    victim = lb.fleet.workers["victim"]
    replies: list[httpx.Response] = []

    async def client() -> None:
        for _ in range(15):
            replies.append(await ask(lb, "m", "load"))
            if len(replies) == 30:  # others are in flight now
                victim.behaviour.fail_rate = 1.0

    await asyncio.gather(*(client() for _ in range(8)))
    assert len(replies) == 120
    assert [r.status_code for r in replies if r.status_code != 200] == []
    shares = Counter(who(r) for r in replies)
    assert shares["victim"] > 0  # it did serve before it failed
    assert shares["victim"] < 40  # and not its full third after
    assert lb.sample("balancer_retries_total", model="m", reason="http_500")


async def test_a_400_from_the_worker_is_not_retried(lb: InProcess) -> None:
    await lb.register_openai("m", lb.worker("first"))
    await lb.register_openai("m", lb.worker("second"))
    reply = await lb.client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert reply.status_code == 400
    assert reply.headers["X-Balancer-Attempts"] == "1"
    served = [w.served.get("/v1/chat/completions", 0) for w in lb.fleet.workers.values()]
    assert sorted(served) == [0, 1]


async def test_a_429_with_retry_after_moves_on_and_skips_the_worker(lb: InProcess) -> None:
    limited = lb.worker("limited", fail_rate=1.0, fail_status=429, retry_after=30)
    await lb.register_openai("m", limited, strategy="round_robin")
    await lb.register_openai("m", lb.worker("spare"))
    replies = [await ask(lb, "m") for _ in range(6)]
    assert [r.json()["result"] for r in replies] == ["[spare] x"] * 6
    assert lb.fleet.workers["limited"].served["/v1/chat/completions"] == 1  # then skipped 30 s
    [row] = [w for w in lb.parts.registry if w.spec.req_url_template.startswith(limited)]
    assert row.status != "ejected"  # 429 says "slow down", not "broken"


async def test_fallbacks_are_tried_in_order(lb: InProcess) -> None:
    await lb.register_openai("gpt-4", lb.worker("dead"), fallbacks=["none", "gpt-3.5"])
    await lb.register_openai("gpt-3.5", lb.worker("backup"))
    lb.fleet.stopped.add("dead")
    reply = await ask(lb, "gpt-4")
    assert reply.json()["result"] == "[backup] x"
    assert reply.headers["X-Balancer-Attempts"] == "2"
    openai_reply = await lb.client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4", "messages": [{"role": "user", "content": "y"}]},
    )
    assert openai_reply.json()["choices"][0]["message"]["content"] == "[backup] y"


async def test_when_nothing_can_serve_the_503_names_the_model_and_why(lb: InProcess) -> None:
    for name in ("down-1", "down-2"):
        await lb.register_openai("m", lb.worker(name))
        lb.fleet.stopped.add(name)
    seed = await ask(lb, "m")
    assert seed.status_code == 503
    assert seed.json()["success"] is False
    assert "m" in seed.json()["msg"]
    assert "cannot connect" in seed.json()["msg"]
    assert seed.headers["X-Balancer-Attempts"] == "2"
    assert seed.headers["X-Balancer-Worker"] in {w.id for w in lb.parts.registry}
    openai_reply = await lb.client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
    )
    assert openai_reply.status_code == 503
    assert openai_reply.json()["error"]["code"] == "no_worker_available"
    assert "model m" in openai_reply.json()["error"]["message"]


async def test_max_concurrency_queues_then_gives_up_with_a_clear_503() -> None:
    async with in_process(queue_timeout=0.1) as lb:
        await lb.register_openai("gpu", lb.worker("single", latency=0.2), max_concurrency=1)
        both = await asyncio.gather(ask(lb, "gpu"), ask(lb, "gpu"))
        assert sorted(r.status_code for r in both) == [200, 503]
        rejected = next(r for r in both if r.status_code == 503)
        assert "max_concurrency" in rejected.json()["msg"]

        lb.fleet.workers["single"].behaviour.latency = 0.002  # short calls: the queue absorbs them
        replies = await asyncio.gather(*(ask(lb, "gpu") for _ in range(3)))
        assert [r.status_code for r in replies] == [200, 200, 200]
        assert lb.fleet.workers["single"].served["/v1/chat/completions"] == 4
        waited = lb.sample("balancer_queue_wait_seconds_count", model="gpu")
        assert waited is not None and waited >= 3  # the rejected one, and two that waited
