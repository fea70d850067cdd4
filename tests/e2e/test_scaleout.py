"""Three balancer replicas sharing one registry on a real redis-server behave as one balancer:
changes reach every replica within a second, a restarted replica comes back in sync, a Redis
outage fails no inference request and loses or duplicates no registration, and a worker's
max_concurrency holds for the whole fleet."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from balancer.fakes.processes import BalancerProcess, RedisProcess, WorkerProcess
from tests.e2e.conftest import eventually, metric_values, openai_registration, unique_model
from tests.e2e.load import Load

PROPAGATION = 1.0
"""The issue's promise: a change made on one replica is served by the others within this."""


@pytest.fixture(scope="module")
def redis_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A Redis of this module's own: a test stops and starts it."""
    with RedisProcess(tmp_path_factory.mktemp("scaleout-redis")) as server:
        yield server


def replica(tmp: Path, redis: RedisProcess, name: str, port: int | None = None) -> BalancerProcess:
    return BalancerProcess(
        tmp, env={"BALANCER_STORE": redis.url}, name=name, port=port, args=["--log-level", "info"]
    )


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, redis_module: RedisProcess
) -> Iterator[list[BalancerProcess]]:
    tmp = tmp_path_factory.mktemp("scaleout")
    started = [replica(tmp, redis_module, name) for name in ("a", "b", "c")]
    try:
        for balancer in started:
            balancer.start()
        yield started
    finally:
        for balancer in started:
            balancer.stop()


def listed(balancer: BalancerProcess, model: str | None = None) -> list[str]:
    """The ids of the workers the replica lists (of `model`, if given), in its order."""
    params = {"model_name": model} if model else {}
    reply = httpx.get(f"{balancer.url}/api/server/workers", params=params, timeout=5)
    assert reply.status_code == 200, reply.text
    return [w["id"] for w in reply.json()["data"]]


def answered_by(balancer: BalancerProcess, model: str) -> str | None:
    """The fake worker's name that answered one request for `model`, or None if none did."""
    reply = httpx.post(
        f"{balancer.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "who"}]},
        timeout=10,
    )
    if reply.status_code != 200:
        return None
    text: str = reply.json()["choices"][0]["message"]["content"]
    return text.split("]")[0].removeprefix("[")


def on_each(
    balancers: list[BalancerProcess],
    condition: Callable[[BalancerProcess], bool],
    within: float,
    what: str,
) -> None:
    """`eventually` the condition holds on every one of `balancers`, timed from now."""
    start = time.monotonic()
    for balancer in balancers:
        left = within - (time.monotonic() - start)
        eventually(partial(condition, balancer), left, f"{balancer.url}: {what}")


def readyz(balancer: BalancerProcess) -> dict[str, Any]:
    reply = httpx.get(f"{balancer.url}/readyz", timeout=5)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def gauge(balancer: BalancerProcess, name: str) -> float:
    """A metric without labels, from its /metrics; fails if it has none."""
    with balancer.client() as client:
        values = metric_values(client, name)
    assert values, f"no {name}"
    return sum(values)


def replicas(balancer: BalancerProcess) -> float:
    """The replicas it counts."""
    return gauge(balancer, "balancer_replicas")


def register(balancer: BalancerProcess, registration: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{balancer.url}/api/server/register", json=registration, timeout=10)


def offline(balancer: BalancerProcess, registration: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{balancer.url}/api/server/offline", json=registration, timeout=10)


def test_a_worker_registered_on_one_replica_is_served_by_the_others_within_a_second(
    fleet: list[BalancerProcess], workers: list[WorkerProcess]
) -> None:
    a, b, c = fleet
    model = unique_model("spread")
    first, second = (openai_registration(model, w) for w in workers[:2])
    assert register(a, first).status_code == 200
    on_each([b, c], lambda r: answered_by(r, model) == "w1", PROPAGATION, "serves it")

    assert register(a, second).status_code == 200
    on_each([b, c], lambda r: len(listed(r, model)) == 2, PROPAGATION, "both listed")
    assert offline(c, first).status_code == 200
    on_each([a, b], lambda r: len(listed(r, model)) == 1, PROPAGATION, "drops it")
    # No more traffic for the worker taken offline, on any replica.
    assert {answered_by(r, model) for r in (a, b) for _ in range(10)} == {"w2"}


def test_a_restarted_replica_comes_back_in_sync(
    fleet: list[BalancerProcess],
    workers: list[WorkerProcess],
    redis_module: RedisProcess,
    tmp_path: Path,
) -> None:
    a, b, c = fleet
    model = unique_model("restart")
    urls = [f"{workers[0].url}/restart/{i}/v1" for i in range(6)]
    registrations = [
        {"model_name": model, "api": "openai", "req_url_template": url} for url in urls
    ]
    for registration in registrations[:3]:
        assert register(a, registration).status_code == 200
    eventually(lambda: len(listed(b, model)) == 3, PROPAGATION, "b has the first three")

    b.stop()
    # While b is away: two more on a, one of the first taken offline on c.
    for registration in registrations[3:5]:
        assert register(a, registration).status_code == 200
    assert offline(c, registrations[0]).status_code == 200
    restarted = replica(tmp_path, redis_module, "b-again", port=b.port)
    restarted.start()
    fleet[1] = restarted
    expected = listed(a, model)
    assert len(expected) == 4 and listed(c, model) == expected
    assert listed(restarted, model) == expected
    # And it follows the others again.
    assert register(c, registrations[5]).status_code == 200
    eventually(lambda: len(listed(restarted, model)) == 5, PROPAGATION, "the restarted one follows")


def test_a_redis_outage_under_load_fails_no_request_and_loses_no_registration(
    fleet: list[BalancerProcess],
    workers: list[WorkerProcess],
    redis_module: RedisProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    model = unique_model("outage")
    for worker in workers:
        assert register(fleet[0], openai_registration(model, worker)).status_code == 200
    on_each(fleet, lambda r: len(listed(r, model)) == 3, PROPAGATION, "all listed")
    before = [listed(balancer) for balancer in fleet]
    assert before[0] == before[1] == before[2]

    def question(i: int) -> dict[str, Any]:
        return {"input": f"q{i}", "model_name": model}

    with ExitStack() as loads:
        running = [
            # One client each, bounded: the outage below takes a few seconds.
            loads.enter_context(
                Load(
                    balancer.url,
                    question,
                    path="/api/v1/chat/completions",
                    clients=1,
                    limit=2000,
                    timeout=10,
                )
            )
            for balancer in fleet
        ]
        time.sleep(0.3)
        redis_module.stop()
        on_each(fleet, lambda r: "store" in readyz(r), 5.0, "notices")
        for balancer in fleet:
            ready = httpx.get(f"{balancer.url}/readyz")
            assert ready.status_code == 200
            assert ready.json()["store"] == "unavailable"
            assert gauge(balancer, "balancer_store_up") == 0
        refused = [
            register(balancer, openai_registration(unique_model("during"), workers[0]))
            for balancer in fleet
        ]
        refused += [offline(balancer, openai_registration(model, workers[0])) for balancer in fleet]
        assert {reply.status_code for reply in refused} == {503}
        assert all("store cannot be reached" in reply.text for reply in refused)
        time.sleep(0.5)

        redis_module.start()
        on_each(fleet, lambda r: "store" not in readyz(r), 10.0, "catches up")
        for balancer in fleet:
            assert gauge(balancer, "balancer_store_up") == 1
            assert gauge(balancer, "balancer_store_outages_total") == 1
            events = balancer.log.read_text()
            assert '"event":"store_unavailable"' in events
            assert '"event":"store_available"' in events
        time.sleep(0.3)

    statuses = [status for load in running for status in load.statuses]
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    after = [listed(balancer) for balancer in fleet]
    assert after == before
    assert len(set(after[0])) == len(after[0])  # nothing duplicated
    # Writes work again, everywhere.
    assert offline(fleet[2], openai_registration(model, workers[0])).status_code == 200
    on_each(fleet, lambda r: len(listed(r, model)) == 2, PROPAGATION, "offline after")


def test_max_concurrency_holds_for_the_whole_fleet(
    fleet: list[BalancerProcess], spawn: Callable[..., WorkerProcess]
) -> None:
    """Three replicas, a worker with max_concurrency 4: each replica keeps 1 in flight (4 / 3,
    rounded down), so 24 concurrent clients never put more than 4 requests on the worker."""
    model = unique_model("limited")
    slow = spawn("slow", latency=0.05)
    assert (
        register(fleet[0], openai_registration(model, slow, max_concurrency=4)).status_code == 200
    )
    on_each(fleet, lambda r: len(listed(r, model)) == 1, PROPAGATION, "listed")
    # Each counts the others by their heartbeats (one a second).
    on_each(fleet, lambda r: replicas(r) == 3, 5.0, "counts 3 replicas")

    def call(i: int) -> int:
        balancer = fleet[i % len(fleet)]
        reply = httpx.post(
            f"{balancer.url}/api/v1/chat/completions",
            json={"input": f"q{i}", "model_name": model},
            timeout=30,
        )
        return reply.status_code

    with ThreadPoolExecutor(24) as pool:
        assert set(pool.map(call, range(48))) == {200}
    assert 1 <= slow.peak_inflight() <= 4
