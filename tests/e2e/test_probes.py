"""Health probing against a real worker process that is killed and started again. Probing,
passive detection and panic mode are specified in-process, in tests/probes/."""

import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from balancer.fakes.processes import BalancerProcess, WorkerProcess
from tests.e2e.conftest import openai_registration, unique_model

INTERVAL = 0.5
UNHEALTHY_THRESHOLD = 3
HEALTHY_THRESHOLD = 2


@pytest.fixture(scope="module")
def prober(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BalancerProcess]:
    balancer = BalancerProcess(
        tmp_path_factory.mktemp("probes"),
        env={
            "BALANCER_PROBE_INTERVAL": str(INTERVAL),
            "BALANCER_UNHEALTHY_THRESHOLD": str(UNHEALTHY_THRESHOLD),
            "BALANCER_HEALTHY_THRESHOLD": str(HEALTHY_THRESHOLD),
        },
    )
    balancer.start()
    yield balancer
    balancer.stop()


@pytest.fixture
def api(prober: BalancerProcess) -> Iterator[httpx.Client]:
    with prober.client() as client:
        yield client


def health_of(api: httpx.Client, model: str) -> dict[str, dict[str, Any]]:
    data = api.get("/api/server/health").json()["data"][model]
    return {w["req_url_template"]: w for w in data["workers"]}


def wait_for(condition: Callable[[], bool], within: float) -> float:
    """Seconds until `condition` held; fails if it did not within `within` seconds."""
    started = time.monotonic()
    while not condition():
        elapsed = time.monotonic() - started
        assert elapsed < within, f"not within {within}s"
        time.sleep(0.05)
    return time.monotonic() - started


def status(api: httpx.Client, model: str, worker: WorkerProcess) -> str:
    return str(health_of(api, model)[f"{worker.url}/v1"]["status"])


def ask(api: httpx.Client, model: str) -> httpx.Response:
    return api.post("/api/v1/chat/completions", json={"input": "hi", "model_name": model})


def test_a_killed_worker_is_ejected_gets_no_traffic_and_comes_back(
    api: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    doomed, steady = spawn("doomed"), spawn("steady")
    for worker in (doomed, steady):
        api.post("/api/server/register", json=openai_registration(model, worker))
    wait_for(lambda: {status(api, model, w) for w in (doomed, steady)} == {"healthy"}, within=3)

    doomed.signal(signal.SIGKILL)
    doomed.wait()
    wait_for(
        lambda: status(api, model, doomed) == "ejected", within=INTERVAL * UNHEALTHY_THRESHOLD + 1
    )
    for _ in range(20):
        reply = ask(api, model)
        assert reply.json()["result"] == "[steady] hi"
        assert reply.headers["X-Balancer-Attempts"] == "1"  # the dead one was never tried

    doomed.start()  # same port
    wait_for(
        lambda: status(api, model, doomed) == "healthy", within=HEALTHY_THRESHOLD * INTERVAL / 2 + 1
    )
    answers = {ask(api, model).json()["result"] for _ in range(10)}
    assert "[doomed] hi" in answers  # back in service
    assert health_of(api, model)[f"{doomed.url}/v1"]["ejections"] == 1
