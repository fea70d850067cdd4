"""Each metric moves exactly as much as it should, read from the balancer's own registry."""

from __future__ import annotations

import asyncio

import pytest

from balancer.events import HealthChanged, Probed
from balancer.metrics import UNKNOWN_MODEL
from tests.inprocess import InProcess, eventually

pytestmark = pytest.mark.anyio

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
    "balancer_event_loop_lag_seconds",
    "balancer_store_up",
    "balancer_store_outages_total",
    "balancer_replicas",
]


def total(lb: InProcess, name: str, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels`."""
    return sum(
        sample.value
        for family in lb.metrics.collect()
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def labelled(lb: InProcess, label: str, value: str) -> list[str]:
    """Every sample name with that label value."""
    return [
        sample.name
        for family in lb.metrics.collect()
        for sample in family.samples
        if sample.labels.get(label) == value
    ]


async def test_every_family_is_exposed_from_start_up(lb: InProcess) -> None:
    reply = await lb.client.get("/metrics")
    assert reply.headers["content-type"].startswith("text/plain")
    for family in FAMILIES:
        assert f"# TYPE {family} " in reply.text, family
        assert f"# HELP {family} " in reply.text, family


async def test_one_request_moves_each_metric_once(lb: InProcess) -> None:
    worker = await lb.register_openai("m", lb.worker("w1"))
    reply = await lb.client.post(
        "/api/v1/chat/completions", json={"input": "one two", "model_name": "m"}
    )
    assert reply.status_code == 200
    mw = {"model": "m", "worker": worker}
    assert (
        lb.sample(
            "balancer_requests_total",
            **mw,
            api="operategpt",
            endpoint="/api/v1/chat/completions",
            code="200",
        )
        == 1
    )
    assert lb.sample("balancer_request_duration_seconds_count", model="m", api="operategpt") == 1
    assert lb.sample("balancer_upstream_duration_seconds_count", **mw, outcome="success") == 1
    assert lb.sample("balancer_overhead_seconds_count", model="m", api="operategpt") == 1
    # The fake worker reports usage: words of the prompt, words of "[w1] one two".
    assert lb.sample("balancer_input_tokens_total", **mw, estimated="false") == 2
    assert lb.sample("balancer_output_tokens_total", **mw, estimated="false") == 3
    assert lb.sample("balancer_output_tokens_per_second_count", model="m", estimated="false") == 1
    assert total(lb, "balancer_retries_total", model="m") == 0
    assert total(lb, "balancer_time_to_first_token_seconds_count", model="m") == 0
    assert lb.sample("balancer_inflight_requests", **mw) == 0
    assert lb.sample("balancer_worker_up", **mw) == 1


async def test_a_retried_request_counts_one_request_and_one_retry(lb: InProcess) -> None:
    dead = await lb.register_openai("m", lb.worker("dead"), strategy="round_robin")
    await lb.register_openai("m", lb.worker("w2"))
    lb.fleet.stopped.add("dead")
    reply = await lb.client.post("/api/v1/chat/completions", json={"input": "x", "model_name": "m"})
    assert reply.headers["X-Balancer-Attempts"] == "2"
    assert total(lb, "balancer_requests_total", model="m") == 1
    assert lb.sample("balancer_retries_total", model="m", reason="connect") == 1
    assert (
        lb.sample(
            "balancer_upstream_duration_seconds_count", model="m", worker=dead, outcome="connect"
        )
        == 1
    )


async def test_a_stream_records_ttft_and_tokens_per_second(lb: InProcess) -> None:
    worker = await lb.register_openai("m", lb.worker("w3"))
    stream = await lb.sdk().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "count my tokens"}], stream=True
    )
    [chunk async for chunk in stream]
    assert lb.sample("balancer_time_to_first_token_seconds_count", model="m", worker=worker) == 1
    assert lb.sample("balancer_output_tokens_per_second_count", model="m", estimated="false") == 1
    # The usage the worker reported when asked on the client's behalf: "[w3] count my tokens".
    assert (
        lb.sample("balancer_output_tokens_total", model="m", worker=worker, estimated="false") == 4
    )
    assert lb.sample("balancer_inflight_requests", model="m", worker=worker) == 0


async def test_template_answers_are_estimated_and_say_so(lb: InProcess) -> None:
    await lb.register_template("m", lb.worker("w1"))
    await lb.client.post("/api/v1/chat/completions", json={"input": "x" * 40, "model_name": "m"})
    assert total(lb, "balancer_input_tokens_total", model="m", estimated="true") == 10
    assert total(lb, "balancer_output_tokens_total", model="m", estimated="false") == 0


async def test_unknown_models_share_one_label(lb: InProcess) -> None:
    for i in range(5):
        await lb.client.post(
            "/api/v1/chat/completions", json={"input": "x", "model_name": f"typo-{i}"}
        )
    assert not any(labelled(lb, "model", f"typo-{i}") for i in range(5))
    assert total(lb, "balancer_requests_total", model=UNKNOWN_MODEL, code="404") == 5


async def test_a_removed_workers_series_go_with_it(lb: InProcess) -> None:
    url = lb.worker("w1")
    worker = await lb.register_openai("m", url)
    await lb.client.post("/api/v1/chat/completions", json={"input": "x", "model_name": "m"})
    assert total(lb, "balancer_requests_total", model="m") == 1
    await lb.client.post(
        "/api/server/offline", json={"model_name": "m", "req_url_template": f"{url}/v1"}
    )
    assert labelled(lb, "model", "m") == []
    assert labelled(lb, "worker", worker) == []


async def test_a_client_that_leaves_before_its_answer_counts_as_499_not_as_an_error(
    lb: InProcess,
) -> None:
    await lb.register_openai("m", lb.worker("slow", latency=5.0))
    request = lb.client.post(
        "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]}
    )
    task = asyncio.ensure_future(request)
    await eventually(lambda: lb.parts.registry.workers_of("m")[0].inflight == 1)  # type: ignore[index]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (
        lb.sample(
            "balancer_requests_total",
            model="m",
            worker="",
            api="openai",
            endpoint="/v1/chat/completions",
            code="499",
        )
        == 1
    )
    assert (
        lb.sample(
            "balancer_requests_total",
            model="m",
            worker="",
            api="openai",
            endpoint="/v1/chat/completions",
            code="500",
        )
        is None
    )


async def stream_while_taken_offline(
    lb: InProcess, model: str, url: str, *, joining: str | None = None
) -> str:
    """A stream on the model's one worker (at `url`), which is taken offline before the stream
    ends; the worker at `joining`, if any, is registered for the model in the meantime."""
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "stream": True}
    task = asyncio.ensure_future(lb.client.post("/v1/chat/completions", json=body))
    [worker] = lb.parts.registry.workers_of(model) or []
    await eventually(lambda: worker.inflight == 1)
    if joining is not None:
        await lb.register_openai(model, joining)
    offline = {"model_name": model, "req_url_template": f"{url}/v1"}
    assert (await lb.client.post("/api/server/offline", json=offline)).status_code == 200
    reply = await task
    assert reply.status_code == 200
    return reply.text


async def test_a_stream_that_ends_after_its_worker_is_removed_does_not_bring_back_its_series(
    lb: InProcess,
) -> None:
    """Counted as a request no worker answered, in the model's series, never in the worker's."""
    url = lb.worker("leaving", chunks=10, chunk_delay=0.02)
    leaving = await lb.register_openai("m", url)
    reply = await stream_while_taken_offline(lb, "m", url, joining=lb.worker("staying"))
    assert "data: [DONE]" in reply
    assert labelled(lb, "worker", leaving) == []
    assert (
        lb.sample(
            "balancer_requests_total",
            model="m",
            worker="",
            api="openai",
            endpoint="/v1/chat/completions",
            code="200",
        )
        == 1
    )
    assert lb.sample("balancer_request_duration_seconds_count", model="m", api="openai") == 1


async def test_a_stream_that_ends_after_its_model_is_gone_does_not_bring_back_its_series(
    lb: InProcess,
) -> None:
    url = lb.worker("leaving", chunks=10, chunk_delay=0.02)
    leaving = await lb.register_openai("m", url)
    assert "data: [DONE]" in await stream_while_taken_offline(lb, "m", url)
    assert labelled(lb, "worker", leaving) == []
    assert labelled(lb, "model", "m") == []
    assert total(lb, "balancer_requests_total", model=UNKNOWN_MODEL, code="200") == 1


async def test_a_probe_that_ends_after_its_worker_is_removed_does_not_bring_back_its_series(
    lb: InProcess,
) -> None:
    url = lb.worker("leaving")
    leaving = await lb.register_openai("m", url)
    worker = lb.parts.registry.get(leaving)
    assert worker is not None
    offline = {"model_name": "m", "req_url_template": f"{url}/v1"}
    assert (await lb.client.post("/api/server/offline", json=offline)).status_code == 200
    lb.parts.events.probed.send(Probed(worker, ok=False, seconds=0.01, error="connect"))
    ejected = HealthChanged(worker, "healthy", "ejected", reason="probe", source="probe")
    lb.parts.events.health_changed.send(ejected)
    assert labelled(lb, "worker", leaving) == []
