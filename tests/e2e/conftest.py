"""Fixtures: real fake workers and real balancers, as processes on 127.0.0.1, stopped by PID."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from balancer.fakes.processes import BalancerProcess, WorkerProcess
from tests import inprocess

_counter = itertools.count()


def eventually(condition: Callable[[], bool], within: float, what: str = "") -> None:
    """Wait until `condition` holds (probes, other processes); fail if not within `within` s."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within}s" + (f": {what}" if what else "")
        time.sleep(0.02)


def unique_model(prefix: str = "m") -> str:
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


def template_registration(model: str, worker: WorkerProcess, **fields: Any) -> dict[str, Any]:
    """The OperateGPT seed's own registration shape, pointed at a fake worker process."""
    return {**inprocess.template_registration(model, worker.url), **fields}


def register_openai(client: httpx.Client, model: str, url: str, **fields: Any) -> str:
    """Register the worker at base URL `url` (its /v1 is the API) as an OpenAI worker of
    `model`; returns its id."""
    reply = client.post(
        "/api/server/register",
        json={"model_name": model, "api": "openai", "req_url_template": f"{url}/v1", **fields},
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["id"])


def listed(client: httpx.Client, model: str) -> dict[str, dict[str, Any]]:
    """The model's workers in /api/server/workers, by id."""
    rows = client.get("/api/server/workers", params={"model_name": model}).json()["data"]
    return {row["id"]: row for row in rows}


def health_of(client: httpx.Client, model: str, worker: str) -> dict[str, Any]:
    """The worker's row in /api/server/health."""
    workers = client.get("/api/server/health").json()["data"][model]["workers"]
    found: dict[str, Any] = next(w for w in workers if w["id"] == worker)
    return found


def metric_values(client: httpx.Client, name: str, **labels: str) -> list[float]:
    """The samples of `name` with these labels, as Prometheus reads /metrics."""
    text = client.get("/metrics").text
    return [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """The sum of the samples of `name` with these labels (0 if there is none)."""
    return sum(metric_values(client, name, **labels))


def worker_metrics(worker: WorkerProcess) -> dict[str, float]:
    """A simulated engine's /metrics (a 200 in text format), by sample name; each sample is of
    the engine's one model, as vLLM labels them."""
    reply = httpx.get(worker.url + "/metrics", timeout=5)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            assert sample.labels["model_name"] == "fake-model"
            found[sample.name] = sample.value
    return found


def openai_sdk(balancer: BalancerProcess) -> openai.OpenAI:
    """The openai SDK, calling `balancer`'s /v1 (no retries: each call is one request)."""
    return openai.OpenAI(base_url=f"{balancer.url}/v1", api_key="x", max_retries=0)


def openai_registration(model: str, worker: WorkerProcess, **fields: Any) -> dict[str, Any]:
    return {"model_name": model, "api": "openai", "req_url_template": f"{worker.url}/v1", **fields}


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def workers(session_tmp: Path) -> Iterator[list[WorkerProcess]]:
    """Three fake workers shared by the tests that do not change their behaviour."""
    started = [WorkerProcess(session_tmp, f"w{i}") for i in range(1, 4)]
    try:
        for worker in started:
            worker.start()
        yield started
    finally:
        for worker in started:
            worker.stop()


@pytest.fixture(scope="session")
def balancer(session_tmp: Path) -> Iterator[BalancerProcess]:
    """One balancer shared by tests that register models of their own (unique names)."""
    proc = BalancerProcess(session_tmp)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def api(prober: BalancerProcess) -> Iterator[httpx.Client]:
    """A client of the module's own `prober` balancer (each module that uses it defines one)."""
    with prober.client() as client:
        yield client


@pytest.fixture
def client(balancer: BalancerProcess) -> Iterator[httpx.Client]:
    with balancer.client() as c:
        yield c


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start fake workers of this test's own: spawn(name, latency=0.01, ...)."""
    started: list[WorkerProcess] = []

    def make(name: str, **options: Any) -> WorkerProcess:
        worker = WorkerProcess(tmp_path, name, **options)
        worker.start()
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop()


@pytest.fixture
def fresh_worker(tmp_path: Path) -> Iterator[WorkerProcess]:
    """A fake worker of this test's own, free to be reconfigured or killed."""
    worker = WorkerProcess(tmp_path, "fresh")
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
