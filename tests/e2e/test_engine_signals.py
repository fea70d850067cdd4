"""The engines' own load, read from their /metrics by the probes: shown in the workers listing,
and counted by every load-aware strategy. Real processes: simulated engines and fake workers
serving metrics text as vLLM writes it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from balancer.fakes.processes import BalancerProcess, WorkerProcess
from tests.e2e.conftest import eventually, listed, register_openai, unique_model

INTERVAL = 0.2

VLLM_LONG_QUEUE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="fake-model"} 8.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="fake-model"} 40.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="fake-model"} 0.97
"""

VLLM_IDLE = VLLM_LONG_QUEUE.replace("} 8.0", "} 0.0").replace("} 40.0", "} 0.0")


@pytest.fixture(scope="module")
def prober(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BalancerProcess]:
    with BalancerProcess(
        tmp_path_factory.mktemp("signals"), env={"BALANCER_PROBE_INTERVAL": str(INTERVAL)}
    ) as balancer:
        yield balancer


def test_queue_depth_and_kv_cache_usage_appear_in_the_listing(
    api: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    engine = spawn("engine", engine=True, slots=1, max_tokens=10_000, decode_step=0.01)
    plain = spawn("plain")  # no /metrics at all: unknown, and its probes do not fail for it
    engine_id = register_openai(api, model, engine.url)
    plain_id = register_openai(api, model, plain.url)
    eventually(lambda: listed(api, model)[engine_id]["queue_depth"] == 0, within=10)
    assert listed(api, model)[engine_id]["kv_cache_usage"] == 0.0
    # Another client of the engine fills its only slot and its queue.
    body = {"model": "fake-model", "prompt": "a long story", "stream": True}
    with (
        httpx.Client(base_url=engine.url, timeout=30) as other,
        other.stream("POST", "/v1/completions", json=body),
        other.stream("POST", "/v1/completions", json=body),
    ):
        eventually(lambda: listed(api, model)[engine_id]["queue_depth"] == 2, within=10)
        assert 0 < listed(api, model)[engine_id]["kv_cache_usage"] <= 1
    rows = listed(api, model)
    assert rows[plain_id]["queue_depth"] is None and rows[plain_id]["kv_cache_usage"] is None
    assert {row["status"] for row in rows.values()} == {"healthy"}


@pytest.mark.parametrize("strategy", ["least_requests", "least_latency", "cache_aware"])
def test_a_worker_whose_engine_reports_a_long_queue_gets_little_traffic(
    api: httpx.Client, prober: BalancerProcess, spawn: Callable[..., WorkerProcess], strategy: str
) -> None:
    model = unique_model()
    busy, calm, quiet = spawn("busy"), spawn("calm"), spawn("quiet")
    busy.control(metrics=VLLM_LONG_QUEUE)
    calm.control(metrics=VLLM_IDLE)
    ids = {w.name: register_openai(api, model, w.url, strategy=strategy) for w in (busy, calm)}
    register_openai(api, model, quiet.url, strategy=strategy)  # no /metrics: its own count only
    eventually(lambda: listed(api, model)[ids["busy"]]["queue_depth"] == 48, within=10)
    eventually(lambda: listed(api, model)[ids["calm"]]["queue_depth"] == 0, within=10)

    def ask(i: int) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": f"q{i}"}]}
        reply = client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        return str(reply.json()["choices"][0]["message"]["content"]).split()[0]

    with prober.client() as client, ThreadPoolExecutor(6) as pool:
        answered = Counter(pool.map(ask, range(60)))
    assert answered["[busy]"] <= 6, answered  # at most 10%
    assert answered["[calm]"] > 0 and answered["[quiet]"] > 0, answered
