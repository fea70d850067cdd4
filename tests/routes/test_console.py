"""GET /ui (the console page) and GET /api/server/live (what it polls)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.inprocess import InProcess, drain_while_in_flight, eventually, in_process

pytestmark = pytest.mark.anyio


async def live(lb: InProcess, **headers: str) -> dict[str, Any]:
    reply = await lb.client.get("/api/server/live", headers=headers)
    assert reply.status_code == 200, reply.text
    data: dict[str, Any] = reply.json()["data"]
    return data


async def test_the_page_is_one_self_contained_document(lb: InProcess) -> None:
    reply = await lb.client.get("/ui")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    page = reply.text
    # Nothing from elsewhere: no CDN, no file of its own to fetch.
    assert "src=" not in page.replace('"src="', "")
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "").replace(
        "http://10.0.0.5:8000/v1", ""
    )
    assert "https://" not in page
    policy = reply.headers["content-security-policy"]
    assert "script-src 'sha256-" in policy
    assert "connect-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert reply.headers["x-frame-options"] == "DENY"


async def test_the_page_itself_needs_no_token_but_its_data_does() -> None:
    async with in_process(admin_token="t0ken") as lb:
        assert (await lb.client.get("/ui")).status_code == 200
        refused = await lb.client.get("/api/server/live")
        assert refused.status_code == 401
        assert "BALANCER_ADMIN_TOKEN" in refused.json()["msg"]
        assert (await live(lb, Authorization="Bearer t0ken")) == {"models": []}


async def test_each_model_shows_its_strategy_and_its_workers(lb: InProcess) -> None:
    a = await lb.register_openai("m", lb.worker("w1"), strategy="round_robin", max_concurrency=4)
    b = await lb.register_openai("m", lb.worker("w2"), weight=3)
    await lb.register_openai("other", lb.worker("w3"))
    data = await live(lb)
    [model, other] = data["models"]
    assert (model["model_name"], model["strategy"], other["model_name"]) == (
        "m",
        "round_robin",
        "other",
    )
    assert other["strategy"] == lb.parts.settings.strategy
    assert [w["id"] for w in model["workers"]] == [a, b]
    first, second = model["workers"]
    assert (first["max_concurrency"], second["weight"]) == (4, 3)
    for key in (
        "status",
        "health",
        "inflight",
        "latency_ms",
        "queue_depth",
        "kv_cache_usage",
        "p50_ms",
        "p99_ms",
        "ttft_ms",
        "tokens_per_second",
        "qps",
        "error_ratio",
        "ejections",
        "last_ejection",
        "last_probe_at",
        "last_error",
        "history",
    ):
        assert key in first, key
    assert len(first["history"]["qps"]) == len(first["history"]["latency_ms"]) == 120


async def test_traffic_shows_as_rates_latencies_and_tokens(lb: InProcess) -> None:
    wid = await lb.register_openai("m", lb.worker("w1", chunks=4))
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(5):
        assert (await lb.client.post("/v1/chat/completions", json=body)).status_code == 200
    # Rates count whole seconds only.
    await asyncio.sleep(1.05)
    [model] = (await live(lb))["models"]
    [worker] = model["workers"]
    assert worker["id"] == wid
    assert sum(worker["history"]["qps"]) == 5
    assert sum(model["history"]["qps"]) == 5
    assert worker["p50_ms"] is not None and worker["p99_ms"] >= worker["p50_ms"]
    assert worker["ttft_ms"] is not None
    assert worker["tokens_per_second"] is not None
    assert (worker["error_ratio"], model["error_ratio"]) == (0, 0)


VLLM_METRICS = (
    'vllm:num_requests_waiting{engine="0",model_name="m"} 10.0\n'
    'vllm:num_requests_running{engine="0",model_name="m"} 2.0\n'
    'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.73\n'
)


async def test_the_engines_queue_and_kv_cache_use_are_shown_where_known() -> None:
    async with in_process(probe_interval=0.01) as lb:
        engine = await lb.register_openai("m", lb.worker("vllm", metrics=VLLM_METRICS))
        plain = await lb.register_openai("m", lb.worker("plain"))  # no /metrics: unknown
        await eventually(lambda: next(iter(lb.parts.registry)).engine is not None)
        [model] = (await live(lb))["models"]
        shown = {w["id"]: (w["queue_depth"], w["kv_cache_usage"]) for w in model["workers"]}
        assert shown == {engine: (12, 0.73), plain: (None, None)}


async def test_secrets_are_redacted_exactly_as_in_the_listing(lb: InProcess) -> None:
    url = lb.worker("w1")
    await lb.register(
        model_name="m",
        api="openai",
        req_url_template=url.replace("http://", "http://user:pa55@") + "/v1?key=s3cret",
        header={"Authorization": "Bearer sk-live", "X-Trace": "visible"},
        health_url=url.replace("http://", "http://user:pa55@") + "/health",
    )
    [listed] = (await lb.client.get("/api/server/workers")).json()["data"]
    [model] = (await live(lb))["models"]
    [shown] = model["workers"]
    for key, value in listed.items():
        if key not in ("status", "inflight", "latency_ms"):
            assert shown[key] == value, key
    text = str(shown)
    assert "pa55" not in text and "sk-live" not in text


async def test_a_draining_worker_is_shown_draining(lb: InProcess) -> None:
    url = lb.worker("slow", latency=0.3)
    await lb.register_openai("m", url)
    pending = await drain_while_in_flight(lb, "m", url)
    [model] = (await live(lb))["models"]
    assert model["workers"][0]["status"] == "draining"
    assert model["counts"]["draining"] == 1
    await pending
    await eventually(lambda: len(lb.parts.registry) == 0)
    assert (await live(lb))["models"] == []
