"""Health probing against real workers: ejection, recovery, passive detection, panic mode."""

import json
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


def test_a_new_worker_turns_healthy_after_its_first_probe(
    api: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model, worker = unique_model(), spawn("new")
    api.post("/api/server/register", json=openai_registration(model, worker))
    wait_for(lambda: status(api, model, worker) == "healthy", within=INTERVAL + 1)
    row = health_of(api, model)[f"{worker.url}/v1"]
    assert row["consecutive_failures"] == 0
    assert row["last_probe_latency_ms"] > 0
    assert row["last_probe_at"] and row["since"]
    assert worker.served().get("/v1/models")  # probed the cheap way, not with a completion
    assert not worker.served().get("/v1/chat/completions")


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


def test_live_failures_eject_a_worker_that_passes_its_probes(
    api: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    sick, a, b = spawn("sick"), spawn("a"), spawn("b")
    # Round robin keeps sending the sick worker its share (least_latency would route around it
    # after one failure, and it would never fail five times in a row).
    for worker in (sick, a, b):
        api.post(
            "/api/server/register", json=openai_registration(model, worker, strategy="round_robin")
        )
    sick.control(fail_rate=1.0, fail_status=500)
    replies = [ask(api, model) for _ in range(30)]
    assert all(r.status_code == 200 for r in replies)  # failover hid every failure
    row = health_of(api, model)[f"{sick.url}/v1"]
    assert row["status"] == "ejected"
    assert row["ejection_reason"] == "passive"
    assert "HTTP 500" in row["last_error"]
    served_before = sick.served().get("/v1/chat/completions", 0)
    for _ in range(10):
        assert ask(api, model).status_code == 200
    assert sick.served().get("/v1/chat/completions", 0) == served_before


def test_panic_mode_routes_when_every_worker_is_ejected(
    api: httpx.Client, prober: BalancerProcess, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    first, second = spawn("p1"), spawn("p2")
    for worker in (first, second):
        worker.control(health_status=503)  # probes fail, completions still work
        api.post("/api/server/register", json=openai_registration(model, worker))
    wait_for(
        lambda: {status(api, model, w) for w in (first, second)} == {"ejected"},
        within=INTERVAL * UNHEALTHY_THRESHOLD + 2,
    )
    assert api.get("/readyz", params={"model": model}).status_code == 503
    for _ in range(4):
        assert ask(api, model).status_code == 200
    events = [
        json.loads(line) for line in prober.log.read_text().splitlines() if line.startswith("{")
    ]
    assert any(e["event"] == "panic_routing" and e.get("model") == model for e in events)
    assert any(e["event"] == "worker_ejected" and e.get("model") == model for e in events)


def test_register_and_offline_add_and_remove_probe_jobs(
    api: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model, worker = unique_model(), spawn("jobs")
    api.post("/api/server/register", json=openai_registration(model, worker))
    wait_for(lambda: worker.served().get("/v1/models", 0) >= 2, within=3 * INTERVAL + 1)
    api.post(
        "/api/server/offline", json={"model_name": model, "req_url_template": f"{worker.url}/v1"}
    )
    time.sleep(INTERVAL)  # a probe already running may still land
    count = worker.served().get("/v1/models", 0)
    time.sleep(3 * INTERVAL)
    assert worker.served().get("/v1/models", 0) == count


def test_readyz_for_a_model_needs_a_healthy_worker(
    api: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    assert api.get("/readyz").status_code == 200
    missing = api.get("/readyz", params={"model": "never-registered"})
    assert missing.status_code == 503
    assert "never-registered" in missing.json()["reason"]
    model, worker = unique_model(), spawn("ready")
    api.post("/api/server/register", json=openai_registration(model, worker))
    wait_for(lambda: api.get("/readyz", params={"model": model}).status_code == 200, within=3)
    assert api.get("/healthz").json() == {"status": "ok"}
