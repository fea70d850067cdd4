"""A replica on Redis, in-process: an unreachable store is named by /readyz and refuses admin
writes with a clear 503 while requests are served from memory; the replica catches up by itself;
replicas divide a worker's max_concurrency between them."""

from __future__ import annotations

from pathlib import Path

import pytest

from balancer.fakes.processes import RedisProcess
from balancer.fleet import Fleet, ReplicasChanged
from balancer.registry import WorkerRegistry, open_store, parse_spec
from balancer.signals import Signal
from tests.inprocess import eventually, in_process

pytestmark = pytest.mark.anyio


async def test_an_unreachable_store_is_named_by_readyz_and_refuses_admin_writes(
    tmp_path: Path,
) -> None:
    redis = RedisProcess(tmp_path)
    redis.start()
    try:
        async with in_process(store=redis.url) as lb:
            await lb.register_openai("m", lb.worker("w1"))
            redis.stop()
            await eventually(lambda: not lb.parts.follower.up, within=5.0)

            ready = await lb.client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["store"] == "unavailable"
            assert "serving the registry as last read" in ready.json()["reason"]
            served = await lb.client.post(
                "/api/v1/chat/completions", json={"model_name": "m", "input": "x"}
            )
            assert served.status_code == 200
            refused = await lb.client.post(
                "/api/server/register",
                json={"model_name": "m", "api": "openai", "req_url_template": "http://w2/v1"},
            )
            assert refused.status_code == 503
            assert "store cannot be reached" in refused.json()["msg"]
            assert lb.sample("balancer_store_up") == 0

            redis.start()  # the same port and data
            await eventually(lambda: lb.parts.follower.up, within=5.0)
            assert (await lb.client.get("/readyz")).json() == {"status": "ready"}
            assert lb.sample("balancer_store_up") == 1
            assert lb.sample("balancer_store_outages_total") == 1
            await lb.register_openai("m", lb.worker("w2"))
            assert len(lb.parts.registry.workers_of("m") or []) == 2
    finally:
        redis.stop()


async def test_each_replica_keeps_its_share_of_max_concurrency_at_least_one() -> None:
    registry = WorkerRegistry(open_store("sqlite:///:memory:"))
    await registry.store.open()
    url = "http://127.0.0.1:1/v1"
    limited = parse_spec(
        {"model_name": "m", "api": "openai", "req_url_template": url, "max_concurrency": 4}
    )
    worker, _ = await registry.register(limited)
    assert worker.limit == 4
    assert registry.share(3) == [] and worker.limit == 1
    assert registry.share(2) == [worker] and worker.limit == 2
    assert registry.share(8) == [] and worker.limit == 1  # never 0: the worker stays in use
    await registry.store.close()


class CountingStore:
    """Only what the fleet uses of a store: a heartbeat that counts `alive` replicas."""

    def __init__(self) -> None:
        self.alive = 1
        self.left: list[str] = []

    async def heartbeat(self, replica: str, ttl: float) -> int:
        return self.alive

    async def leave(self, replica: str) -> None:
        self.left.append(replica)


async def test_the_fleet_tells_when_the_number_of_replicas_changes() -> None:
    store = CountingStore()
    changed = Signal[ReplicasChanged]("changed")
    heard: list[int] = []
    changed.connect(lambda event: heard.append(event.replicas))
    fleet = Fleet(store, changed=changed)  # type: ignore[arg-type]
    await fleet.beat()
    store.alive = 3
    await fleet.beat()
    await fleet.beat()
    store.alive = 2
    await fleet.beat()
    assert heard == [3, 2]
    await fleet.leave()
    assert store.left == [fleet.id]


async def test_the_share_follows_the_replicas_counted() -> None:
    async with in_process() as lb:
        await lb.register_openai("m", lb.worker("w1"), max_concurrency=2)
        [worker] = lb.parts.registry.workers_of("m") or []
        lb.parts.events.replicas_changed.send(ReplicasChanged(2))
        assert worker.limit == 1
        lb.parts.events.replicas_changed.send(ReplicasChanged(1))
        assert worker.limit == 2
        assert lb.sample("balancer_replicas") == 1
