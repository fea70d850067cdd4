"""Liveness and readiness, for orchestrators and the load balancers in front of us."""

from __future__ import annotations

import pytest

from tests.inprocess import InProcess, drain_while_in_flight, eventually, in_process

pytestmark = pytest.mark.anyio


async def test_healthz_answers_while_the_process_serves(lb: InProcess) -> None:
    reply = await lb.client.get("/healthz")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok"}


async def test_readyz_is_ready_once_started(lb: InProcess) -> None:
    reply = await lb.client.get("/readyz")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ready"}


async def test_readyz_for_an_unregistered_model_is_503_and_says_why(lb: InProcess) -> None:
    reply = await lb.client.get("/readyz", params={"model": "never-registered"})
    assert reply.status_code == 503
    assert reply.json()["status"] == "unavailable"
    assert "never-registered" in reply.json()["reason"]


async def test_readyz_for_a_model_needs_a_healthy_worker() -> None:
    async with in_process(probe_interval=0.01, unhealthy_threshold=1) as lb:
        await lb.register_openai("m", lb.worker("ready"))

        async def ready() -> int:
            return (await lb.client.get("/readyz", params={"model": "m"})).status_code

        await eventually(lambda: next(iter(lb.parts.registry)).status == "healthy")
        assert await ready() == 200
        lb.fleet.stopped.add("ready")
        await eventually(lambda: next(iter(lb.parts.registry)).status == "ejected")
        reply = await lb.client.get("/readyz", params={"model": "m"})
        assert reply.status_code == 503
        assert "no healthy worker" in reply.json()["reason"]


async def test_readyz_for_a_model_whose_only_healthy_worker_drains_is_503() -> None:
    async with in_process(probe_interval=0.01) as lb:
        url = lb.worker("slow", latency=0.3)
        await lb.register_openai("m", url)
        await eventually(lambda: next(iter(lb.parts.registry)).status == "healthy")
        pending = await drain_while_in_flight(lb, "m", url)
        reply = await lb.client.get("/readyz", params={"model": "m"})
        assert reply.status_code == 503
        assert "draining" in reply.json()["reason"]
        assert (await pending).status_code == 200
