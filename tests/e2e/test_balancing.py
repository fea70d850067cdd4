"""Selection and failover with real workers under a bounded load."""

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from balancer.fakes.processes import BalancerProcess, WorkerProcess, free_port
from tests.e2e.conftest import openai_registration, unique_model


class Load:
    """`clients` threads sending requests in a loop until stopped: a bounded, steady load."""

    def __init__(self, url: str, model: str, clients: int = 8, limit: int = 5000) -> None:
        self.url, self.model = url, model
        self.results: list[tuple[float, int, str]] = []  # (time, status, answer or error)
        self._stop = threading.Event()
        self._limit = limit
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set() and len(self.results) < self._limit:
                reply = client.post(
                    "/api/v1/chat/completions", json={"input": "load", "model_name": self.model}
                )
                body = reply.json()
                self.results.append(
                    (time.monotonic(), reply.status_code, body.get("result") or body.get("msg", ""))
                )

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def shares(self, since: float = 0.0) -> Counter[str]:
        return Counter(
            answer.split("]")[0].strip("[")
            for t, status, answer in self.results
            if t >= since and status == 200
        )

    def errors(self) -> list[tuple[float, int, str]]:
        return [r for r in self.results if r[1] != 200]


def sse_content(text: str) -> str:
    """The assistant's text from a chat completion SSE stream."""
    parts = []
    for line in text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                parts.append(choice.get("delta", {}).get("content") or "")
    return "".join(parts)


def register(client: httpx.Client, model: str, worker: WorkerProcess, **fields: Any) -> None:
    reply = client.post("/api/server/register", json=openai_registration(model, worker, **fields))
    assert reply.status_code == 200, reply.text


def test_weighted_three_to_one(client: httpx.Client, spawn: Callable[..., WorkerProcess]) -> None:
    model = unique_model()
    heavy, light = spawn("heavy"), spawn("light")
    register(client, model, heavy, weight=3, strategy="weighted")
    register(client, model, light, weight=1)
    answers = Counter(
        client.post("/api/v1/chat/completions", json={"input": "x", "model_name": model}).json()[
            "result"
        ]
        for _ in range(80)
    )
    assert answers == {"[heavy] x": 60, "[light] x": 20}  # smooth WRR is exact


def test_least_latency_sends_most_traffic_to_the_fast_worker_and_follows_changes(
    balancer: BalancerProcess, client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    fast, slow = spawn("fast", latency=0.01), spawn("slow", latency=0.2)
    register(client, model, fast, strategy="least_latency")
    register(client, model, slow)
    with Load(balancer.url, model) as load:
        time.sleep(3)
        first = load.shares()
        fast.control(latency=0.4)  # the fast one slows down mid-run
        changed = time.monotonic()
        time.sleep(4)
    assert first["fast"] / sum(first.values()) >= 0.8, first
    later = load.shares(since=changed + 2)  # "within seconds"
    assert later["slow"] / sum(later.values()) >= 0.6, later
    assert not load.errors()


@pytest.mark.parametrize("how", ["answers 500", "is killed"])
def test_a_failing_worker_mid_load_gives_zero_client_errors(
    balancer: BalancerProcess, client: httpx.Client, spawn: Callable[..., WorkerProcess], how: str
) -> None:
    model = unique_model()
    victim, a, b = spawn("victim"), spawn("a"), spawn("b")
    for worker in (victim, a, b):
        register(client, model, worker, strategy="round_robin")
    with Load(balancer.url, model) as load:
        time.sleep(1)
        if how == "is killed":
            victim.signal(signal.SIGKILL)
        else:
            victim.control(fail_rate=1.0, fail_status=500)
        time.sleep(2)
    assert len(load.results) > 100
    assert load.errors() == []
    assert load.shares()["victim"] > 0  # it did serve before it failed


def test_a_stream_whose_first_worker_refuses_is_served_by_the_next(
    balancer: BalancerProcess, client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    dead_url = f"http://127.0.0.1:{free_port()}/v1"
    client.post(
        "/api/server/register",
        json={
            "model_name": model,
            "api": "openai",
            "req_url_template": dead_url,
            "strategy": "round_robin",
        },
    )
    register(client, model, workers[0])
    sdk = openai.OpenAI(base_url=f"{balancer.url}/v1", api_key="x", max_retries=0)
    for _ in range(4):  # round robin: the dead one comes first every other time
        stream = sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "go"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == ("[w1] go")


def test_a_stream_that_fails_before_its_first_byte_fails_over(
    balancer: BalancerProcess, client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    broken, good = spawn("broken"), spawn("good")
    broken.control(break_after=0)  # headers, then the connection drops before any chunk
    register(client, model, broken, strategy="round_robin")
    register(client, model, good)
    for _ in range(4):
        reply = client.post(
            "/v1/chat/completions",
            json={"model": model, "stream": True, "messages": [{"role": "user", "content": "s"}]},
        )
        assert reply.status_code == 200
        assert sse_content(reply.text) == "[good] s"
        assert reply.text.rstrip().endswith("data: [DONE]")


def test_a_400_from_the_worker_is_not_retried(
    client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    first, second = spawn("first"), spawn("second")
    register(client, model, first)
    register(client, model, second)
    reply = client.post("/v1/chat/completions", json={"model": model, "messages": []})
    assert reply.status_code == 400
    assert reply.headers["X-Balancer-Attempts"] == "1"
    served = [w.served().get("/v1/chat/completions", 0) for w in (first, second)]
    assert sorted(served) == [0, 1]


def test_429_with_retry_after_moves_on_and_skips_the_worker(
    client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    limited, spare = spawn("limited"), spawn("spare")
    limited.control(fail_rate=1.0, fail_status=429, retry_after=30)
    register(client, model, limited, strategy="round_robin")
    register(client, model, spare)
    answers = [
        client.post("/api/v1/chat/completions", json={"input": "x", "model_name": model}).json()
        for _ in range(6)
    ]
    assert all(a["result"] == "[spare] x" for a in answers)
    assert limited.served().get("/v1/chat/completions") == 1  # then skipped for 30 s


def test_fallbacks_are_tried_in_order(client: httpx.Client, workers: list[WorkerProcess]) -> None:
    primary, empty, backup = unique_model("gpt-4"), unique_model("none"), unique_model("gpt-3.5")
    dead = f"http://127.0.0.1:{free_port()}/v1"
    client.post(
        "/api/server/register",
        json={
            "model_name": primary,
            "api": "openai",
            "req_url_template": dead,
            "fallbacks": [empty, backup],
        },
    )
    register(client, backup, workers[2])
    reply = client.post("/api/v1/chat/completions", json={"input": "x", "model_name": primary})
    assert reply.json()["result"] == "[w3] x"
    assert reply.headers["X-Balancer-Attempts"] == "2"
    sdk_reply = client.post(
        "/v1/chat/completions",
        json={"model": primary, "messages": [{"role": "user", "content": "y"}]},
    )
    assert sdk_reply.json()["choices"][0]["message"]["content"] == "[w3] y"


def test_when_nothing_can_serve_the_503_names_the_model_and_why(client: httpx.Client) -> None:
    model = unique_model()
    for _ in range(2):
        client.post(
            "/api/server/register",
            json={
                "model_name": model,
                "api": "openai",
                "req_url_template": f"http://127.0.0.1:{free_port()}/v1",
            },
        )
    seed = client.post("/api/v1/chat/completions", json={"input": "x", "model_name": model})
    assert seed.status_code == 503
    assert seed.json()["success"] is False
    assert model in seed.json()["msg"] and "cannot connect" in seed.json()["msg"]
    assert seed.headers["X-Balancer-Attempts"] == "2"
    assert seed.headers["X-Balancer-Worker"]
    oai = client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "x"}]},
    )
    assert oai.status_code == 503
    assert oai.json()["error"]["code"] == "no_worker_available"
    assert model in oai.json()["error"]["message"]


def test_max_concurrency_queues_then_gives_up_with_a_clear_503(
    tmp_path: Path, spawn: Callable[..., WorkerProcess]
) -> None:
    balancer = BalancerProcess(tmp_path, env={"BALANCER_QUEUE_TIMEOUT": "0.5"})
    balancer.start()
    worker = spawn("single", latency=1.0)
    try:
        with balancer.client() as client:
            register(client, "gpu", worker, max_concurrency=1)

            def call(_: int) -> httpx.Response:
                return client.post(
                    "/api/v1/chat/completions", json={"input": "x", "model_name": "gpu"}
                )

            with ThreadPoolExecutor(2) as pool:
                replies = list(pool.map(call, range(2)))
            statuses = sorted(r.status_code for r in replies)
            assert statuses == [200, 503]
            rejected = next(r for r in replies if r.status_code == 503)
            assert "max_concurrency" in rejected.json()["msg"]
            worker.control(latency=0.2)
            with ThreadPoolExecutor(3) as pool:  # short calls: the queue absorbs them
                assert [r.status_code for r in pool.map(call, range(3))] == [200, 200, 200]
    finally:
        balancer.stop()
