"""Each metric moves exactly as much as it should, read from /metrics like Prometheus does."""

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from balancer.fakes.processes import BalancerProcess, WorkerProcess, free_port
from tests.e2e.conftest import openai_registration, template_registration, unique_model

FAMILIES = [
    "balancer_requests_total",
    "balancer_request_duration_seconds",
    "balancer_upstream_duration_seconds",
    "balancer_overhead_seconds",
    "balancer_time_to_first_token_seconds",
    "balancer_output_tokens_total",
    "balancer_input_tokens_total",
    "balancer_output_tokens_per_second",
    "balancer_inflight_requests",
    "balancer_worker_up",
    "balancer_worker_state",
    "balancer_probe_duration_seconds",
    "balancer_probe_failures_total",
    "balancer_ejections_total",
    "balancer_retries_total",
    "balancer_panic_total",
    "balancer_queue_wait_seconds",
]


def scrape(client: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = client.get("/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def test_every_family_is_exposed_from_start_up(tmp_path_factory: pytest.TempPathFactory) -> None:
    balancer = BalancerProcess(tmp_path_factory.mktemp("metrics-empty"))
    balancer.start()
    try:
        with balancer.client() as client:
            reply = client.get("/metrics")
        assert reply.headers["content-type"].startswith("text/plain")
        for family in FAMILIES:
            assert f"# TYPE {family} " in reply.text, family
            assert f"# HELP {family} " in reply.text, family
    finally:
        balancer.stop()


def test_one_request_moves_each_metric_once(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    client.post("/api/server/register", json=openai_registration(model, workers[0]))
    before = scrape(client)
    reply = client.post("/api/v1/chat/completions", json={"input": "one two", "model_name": model})
    worker = reply.headers["X-Balancer-Worker"]
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert (
        delta("balancer_requests_total", model=model, worker=worker, api="operategpt", code="200")
        == 1
    )
    assert delta("balancer_request_duration_seconds_count", model=model, api="operategpt") == 1
    assert (
        delta(
            "balancer_upstream_duration_seconds_count",
            model=model,
            worker=worker,
            outcome="success",
        )
        == 1
    )
    assert delta("balancer_overhead_seconds_count", model=model) == 1
    # The fake worker reports usage: words of the prompt, words of "[w1] one two".
    assert delta("balancer_input_tokens_total", model=model, estimated="false") == 2
    assert delta("balancer_output_tokens_total", model=model, estimated="false") == 3
    assert delta("balancer_output_tokens_per_second_count", model=model) == 1
    assert delta("balancer_retries_total", model=model) == 0
    assert delta("balancer_time_to_first_token_seconds_count", model=model) == 0
    assert value(after, "balancer_inflight_requests", model=model, worker=worker) == 0
    assert value(after, "balancer_worker_up", model=model, worker=worker) == 1


def test_a_retried_request_counts_one_request_and_one_retry(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    client.post(
        "/api/server/register",
        json={
            "model_name": model,
            "api": "openai",
            "strategy": "round_robin",
            "req_url_template": f"http://127.0.0.1:{free_port()}/v1",
        },
    )
    client.post("/api/server/register", json=openai_registration(model, workers[1]))
    before = scrape(client)
    reply = client.post("/api/v1/chat/completions", json={"input": "x", "model_name": model})
    assert reply.headers["X-Balancer-Attempts"] == "2"
    after = scrape(client)
    assert (
        value(after, "balancer_requests_total", model=model)
        - value(before, "balancer_requests_total", model=model)
        == 1
    )
    assert (
        value(after, "balancer_retries_total", model=model, reason="connect")
        - value(before, "balancer_retries_total", model=model, reason="connect")
        == 1
    )
    assert (
        value(after, "balancer_upstream_duration_seconds_count", model=model, outcome="connect")
        == 1
    )


def test_a_stream_records_ttft_and_tokens_per_second(
    balancer: BalancerProcess, client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    client.post("/api/server/register", json=openai_registration(model, workers[2]))
    sdk = openai.OpenAI(base_url=f"{balancer.url}/v1", api_key="x", max_retries=0)
    chunks = list(
        sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "count my tokens"}], stream=True
        )
    )
    assert all(chunk.choices for chunk in chunks)  # the usage chunk we asked for is not shown
    after = scrape(client)
    assert value(after, "balancer_time_to_first_token_seconds_count", model=model) == 1
    assert (
        value(after, "balancer_output_tokens_per_second_count", model=model, estimated="false") == 1
    )
    assert value(after, "balancer_output_tokens_total", model=model, estimated="false") == 4


def test_a_client_that_asks_for_usage_still_gets_it(
    balancer: BalancerProcess, client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    client.post("/api/server/register", json=openai_registration(model, workers[2]))
    sdk = openai.OpenAI(base_url=f"{balancer.url}/v1", api_key="x", max_retries=0)
    chunks = list(
        sdk.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2


def test_template_answers_are_estimated_and_say_so(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    client.post("/api/server/register", json=template_registration(model, workers[0]))
    client.post("/api/v1/chat/completions", json={"input": "x" * 40, "model_name": model})
    after = scrape(client)
    assert value(after, "balancer_input_tokens_total", model=model, estimated="true") == 10
    assert value(after, "balancer_output_tokens_total", model=model, estimated="false") == 0


def test_unknown_models_share_one_label(client: httpx.Client) -> None:
    for i in range(5):
        client.post("/api/v1/chat/completions", json={"input": "x", "model_name": f"typo-{i}"})
    after = scrape(client)
    assert not any(("model", f"typo-{i}") in labels for (_, labels) in after for i in range(5))
    assert value(after, "balancer_requests_total", model="_unknown", code="404") >= 5


def test_a_removed_workers_series_go_with_it(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    client.post("/api/server/register", json=openai_registration(model, workers[0]))
    client.post("/api/v1/chat/completions", json={"input": "x", "model_name": model})
    assert value(scrape(client), "balancer_requests_total", model=model) == 1
    client.post(
        "/api/server/offline",
        json={"model_name": model, "req_url_template": f"{workers[0].url}/v1"},
    )
    assert not any(("model", model) in labels for (_, labels) in scrape(client))
