"""`balancer serve --workers 2`: processes share the registry (through the store) and the counts
(through prometheus-client's multiprocess mode)."""

import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from balancer.fakes.processes import BalancerProcess, WorkerProcess
from tests.e2e.conftest import openai_registration
from tests.test_metrics import FAMILIES

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client) -> Samples:
    """Every sample of /metrics, read as Prometheus reads it."""
    text = client.get("/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BalancerProcess]:
    balancer = BalancerProcess(tmp_path_factory.mktemp("multiprocess"), args=["--workers", "2"])
    balancer.start()
    yield balancer
    balancer.stop()


def every_process_sees(url: str, model: str, present: bool, within: float = 5.0) -> None:
    """Fresh connections land on either process: all of them must agree."""
    deadline = time.monotonic() + within
    while True:
        seen = [
            any(
                w["model_name"] == model
                for w in httpx.get(f"{url}/api/server/workers", timeout=5).json()["data"]
            )
            for _ in range(12)
        ]
        if all(s == present for s in seen):
            return
        assert time.monotonic() < deadline, f"processes disagree on {model}: {seen}"
        time.sleep(0.2)


def test_every_family_is_exposed_from_start_up(two: BalancerProcess) -> None:
    text = httpx.get(f"{two.url}/metrics", timeout=5).text
    for family in FAMILIES:
        assert f"# TYPE {family} " in text, family


def test_registrations_reach_every_process_and_counts_add_up(
    two: BalancerProcess, workers: list[WorkerProcess]
) -> None:
    httpx.post(
        f"{two.url}/api/server/register", json=openai_registration("shared", workers[0])
    ).raise_for_status()
    every_process_sees(two.url, "shared", present=True)

    def call(i: int) -> int:
        reply = httpx.post(
            f"{two.url}/api/v1/chat/completions",
            json={"input": f"q{i}", "model_name": "shared"},
            timeout=10,
        )
        return reply.status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(call, range(100))) == {200}
    with httpx.Client(base_url=two.url) as client:
        samples = scrape(client)
    assert value(samples, "balancer_requests_total", model="shared") == 100
    assert value(samples, "balancer_request_duration_seconds_count", model="shared") == 100

    httpx.post(
        f"{two.url}/api/server/offline",
        json={"model_name": "shared", "req_url_template": f"{workers[0].url}/v1"},
    ).raise_for_status()
    every_process_sees(two.url, "shared", present=False)


def fresh_connections(balancer: BalancerProcess) -> httpx.Client:
    """A client that opens a new connection for every request: either process may answer."""
    return balancer.client(limits=httpx.Limits(max_keepalive_connections=0))


def test_offlines_are_never_undone_and_registrations_never_dropped(
    two: BalancerProcess, workers: list[WorkerProcess]
) -> None:
    """20 clients register and take offline 50 URLs, three times each, through fresh
    connections: every reply succeeds, and within 2 s every process lists none."""
    model = "churn"
    urls = [f"{workers[0].url}/churn/{i}/v1" for i in range(50)]

    with fresh_connections(two) as client:

        def churn(url: str) -> list[int]:
            registration = {"model_name": model, "api": "openai", "req_url_template": url}
            return [
                client.post(path, json=registration).status_code
                for _ in range(3)
                for path in ("/api/server/register", "/api/server/offline")
            ]

        with ThreadPoolExecutor(20) as pool:
            replies = dict(zip(urls, pool.map(churn, urls), strict=True))
        assert {url: codes for url, codes in replies.items() if codes != [200] * 6} == {}
        deadline = time.monotonic() + 2.0
        while True:
            listings = [
                client.get("/api/server/workers", params={"model_name": model}).json()["data"]
                for _ in range(16)
            ]
            if not any(listings):
                break
            left = sorted({w["req_url_template"] for listing in listings for w in listing})
            assert time.monotonic() < deadline, f"still listed: {left}"
            time.sleep(0.1)


def test_a_removed_workers_series_are_gone_from_every_process_and_stay_gone(
    two: BalancerProcess, spawn: Callable[..., WorkerProcess]
) -> None:
    """prometheus-client cannot remove a series from the multiprocess files: the exposition must
    leave the worker's out, including those of a stream that ended after its removal."""
    model = "leaving"
    worker = spawn("leaving", chunks=20, chunk_delay=0.05)
    registration = openai_registration(model, worker)
    with fresh_connections(two) as client:
        wid = client.post("/api/server/register", json=registration).json()["id"]
        every_process_sees(two.url, model, present=True)
        served = client.post("/api/v1/chat/completions", json={"input": "x", "model_name": model})
        assert served.status_code == 200
        body = {"model": model, "messages": [{"role": "user", "content": "x"}], "stream": True}
        with (
            two.client() as streaming,
            streaming.stream("POST", "/v1/chat/completions", json=body) as stream,
        ):
            lines = stream.iter_lines()
            assert next(lines).startswith("data:")
            assert client.post("/api/server/offline", json=registration).status_code == 200
            assert "data: [DONE]" in list(lines)

        def left() -> list[str]:
            """Its lines in 16 scrapes, each from either process."""
            scrapes = "\n".join(client.get("/metrics").text for _ in range(16))
            return [line for line in scrapes.splitlines() if wid in line or f'"{model}"' in line]

        deadline = time.monotonic() + 2.0
        while leftovers := left():
            assert time.monotonic() < deadline, leftovers[:5]
            time.sleep(0.1)


def test_sigterm_stops_every_process_and_exits_0(tmp_path: Path) -> None:
    balancer = BalancerProcess(tmp_path, args=["--workers", "2"])
    balancer.start()
    balancer.signal(signal.SIGTERM)
    assert balancer.wait(20) == 0


@pytest.mark.parametrize("args", [["--workers", "2", "--demo"], ["--workers", "0"]])
def test_settings_that_cannot_work_with_several_processes_are_refused(
    tmp_path: Path, args: list[str]
) -> None:
    balancer = BalancerProcess(tmp_path, args=args)
    balancer.spawn()
    assert balancer.wait() == 1
    assert "bad_configuration" in balancer.log.read_text()
