"""POST /api/server/drain: no new request, those in flight finish, then the worker is removed;
POST /api/server/weight: a worker's weight changes and stays changed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.inprocess import InProcess, drain_while_in_flight, eventually, in_process

pytestmark = pytest.mark.anyio


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


def target(url: str, model: str = "m") -> dict[str, str]:
    return {"model_name": model, "req_url_template": f"{url}/v1"}


async def statuses(lb: InProcess) -> dict[str, str]:
    reply = await lb.client.get("/api/server/workers")
    return {row["owner"]: row["status"] for row in reply.json()["data"]}


async def test_an_idle_worker_is_removed_at_once(lb: InProcess) -> None:
    url = lb.worker("w1")
    await lb.register_openai("m", url, owner="old")
    reply = await lb.client.post("/api/server/drain", json=target(url))
    assert reply.status_code == 200, reply.text
    assert reply.json()["success"] is True
    assert reply.json()["inflight"] == 0
    await eventually(lambda: len(lb.parts.registry) == 0)
    assert await lb.parts.store.load() == []


async def test_requests_in_flight_finish_and_new_ones_go_elsewhere(lb: InProcess) -> None:
    slow = lb.worker("slow", latency=0.3)
    other = lb.worker("other")
    await lb.register_openai("m", slow, owner="slow", strategy="round_robin")
    in_flight = []
    for _ in range(4):
        in_flight.append(
            asyncio.create_task(lb.client.post("/v1/chat/completions", json=chat("m")))
        )
    await eventually(lambda: lb.parts.registry.workers_of("m")[0].inflight == 4)  # type: ignore[index]
    await lb.register_openai("m", other, owner="other")

    reply = await lb.client.post("/api/server/drain", json=target(slow))
    assert reply.json()["inflight"] == 4
    assert (await statuses(lb))["slow"] == "draining"
    for _ in range(5):
        served = await lb.client.post("/v1/chat/completions", json=chat("m"))
        assert served.status_code == 200
    assert lb.fleet.workers["other"].served["/v1/chat/completions"] == 5

    assert [r.status_code for r in await asyncio.gather(*in_flight)] == [200] * 4
    await eventually(lambda: len(lb.parts.registry) == 1)
    assert list(await statuses(lb)) == ["other"]


async def test_a_model_whose_only_worker_drains_refuses_new_requests(lb: InProcess) -> None:
    url = lb.worker("slow", latency=0.3)
    await lb.register_openai("m", url)
    first = await drain_while_in_flight(lb, "m", url)
    refused = await lb.client.post("/v1/chat/completions", json=chat("m"))
    assert refused.status_code == 503
    assert (await first).status_code == 200


async def test_registering_again_takes_a_draining_worker_back(lb: InProcess) -> None:
    url = lb.worker("slow", latency=0.3)
    await lb.register_openai("m", url, owner="w")
    pending = await drain_while_in_flight(lb, "m", url)
    assert (await statuses(lb))["w"] == "draining"
    await lb.register_openai("m", url, owner="w")
    assert (await statuses(lb))["w"] != "draining"
    await pending
    await asyncio.sleep(0.1)
    assert len(lb.parts.registry) == 1


async def test_draining_twice_is_no_error(lb: InProcess) -> None:
    url = lb.worker("slow", latency=0.3)
    await lb.register_openai("m", url)
    pending = await drain_while_in_flight(lb, "m", url)  # drained once, with 200
    again = await lb.client.post("/api/server/drain", json=target(url))
    assert again.status_code == 200
    assert "already draining" in again.json()["msg"]
    await pending


@pytest.mark.parametrize("path", ["/api/server/drain", "/api/server/weight"])
@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"req_url_template": "http://w1/v1", "weight": 2}, 400, "model_name is required"),
        ({"model_name": "m", "weight": 2}, 400, "req_url_template is required"),
        ({"model_name": "m", "req_url_template": "http://nope/v1", "weight": 2}, 404, "no llm"),
        ({"model_name": "x", "req_url_template": "http://w1/v1", "weight": 2}, 404, "no llm"),
        ({"model_name": "m", "req_url_template": "not a url", "weight": 2}, 404, "no llm"),
    ],
)
async def test_a_bad_target_gets_a_clear_error_and_changes_nothing(
    lb: InProcess, path: str, body: dict[str, Any], status: int, fragment: str
) -> None:
    await lb.register_openai("m", lb.worker("w1"))
    reply = await lb.client.post(path, json=body)
    assert reply.status_code == status, reply.text
    assert reply.json()["success"] is False
    assert fragment in reply.json()["msg"]
    [worker] = lb.parts.registry
    assert (worker.draining, worker.spec.weight) == (False, 1)


async def test_a_weight_change_is_listed_and_kept_in_the_store(lb: InProcess) -> None:
    url = lb.worker("w1")
    await lb.register_openai("m", url, owner="team", max_concurrency=3)
    reply = await lb.client.post("/api/server/weight", json={**target(url), "weight": 2.5})
    assert reply.status_code == 200, reply.text
    assert reply.json()["weight"] == 2.5
    [row] = (await lb.client.get("/api/server/workers")).json()["data"]
    assert (row["weight"], row["owner"], row["max_concurrency"]) == (2.5, "team", 3)
    [stored] = await lb.parts.store.load()
    assert stored.spec.weight == 2.5


@pytest.mark.parametrize(
    ("weight", "fragment"),
    [(None, "weight is required"), (0, "weight"), (-1, "weight"), ("x", "weight")],
)
async def test_a_bad_weight_is_refused_with_the_reason(
    lb: InProcess, weight: Any, fragment: str
) -> None:
    url = lb.worker("w1")
    await lb.register_openai("m", url)
    body: dict[str, Any] = target(url)
    if weight is not None:
        body["weight"] = weight
    reply = await lb.client.post("/api/server/weight", json=body)
    assert reply.status_code == 400
    assert fragment in reply.json()["msg"]
    [row] = (await lb.client.get("/api/server/workers")).json()["data"]
    assert row["weight"] == 1


async def test_drain_and_weight_need_the_admin_token() -> None:
    async with in_process(admin_token="t0ken") as lb:
        url = lb.worker("w1")
        await lb.client.post(
            "/api/server/register",
            json={"model_name": "m", "api": "openai", "req_url_template": f"{url}/v1"},
            headers={"Authorization": "Bearer t0ken"},
        )
        for path, body in [
            ("/api/server/drain", target(url)),
            ("/api/server/weight", {**target(url), "weight": 3}),
        ]:
            reply = await lb.client.post(path, json=body)
            assert reply.status_code == 401
            assert "BALANCER_ADMIN_TOKEN" in reply.json()["msg"]
        assert len(lb.parts.registry) == 1
        assert next(iter(lb.parts.registry)).spec.weight == 1


async def test_a_stream_in_flight_is_relayed_to_its_end_before_the_worker_goes(
    lb: InProcess,
) -> None:
    url = lb.worker("streamer", chunks=6, chunk_delay=0.05)
    await lb.register_openai("m", url)
    pending = await drain_while_in_flight(lb, "m", url, stream=True)
    await asyncio.sleep(0.1)
    assert next(iter(lb.parts.registry)).draining  # still there: its stream goes on
    reply = await pending
    assert reply.status_code == 200
    assert reply.text.rstrip().endswith("data: [DONE]")
    assert reply.text.count("chat.completion.chunk") >= 6
    await eventually(lambda: len(lb.parts.registry) == 0)
