"""The registry API: POST /api/server/register, GET /api/server/workers, POST
/api/server/offline, GET /api/server/health."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.inprocess import InProcess, eventually, in_process, template_registration

pytestmark = pytest.mark.anyio


async def listing(lb: InProcess, model: str | None = None) -> list[dict[str, Any]]:
    params = {"model_name": model} if model else None
    reply = await lb.client.get("/api/server/workers", params=params)
    assert reply.status_code == 200
    rows: list[dict[str, Any]] = reply.json()["data"]
    return rows


async def test_register_replies_in_the_operategpt_envelope(lb: InProcess) -> None:
    reply = await lb.client.post(
        "/api/server/register", json=template_registration("m", lb.worker("w1"))
    )
    assert reply.status_code == 200
    body = reply.json()
    assert body["success"] is True
    assert body["msg"] == "register LLM m succeed!"
    assert body["created"] is True


async def test_the_listing_is_a_json_array_with_live_fields(lb: InProcess) -> None:
    url = lb.worker("w1")
    worker_id = await lb.register_openai("m", url, weight=2, owner="team-a")
    reply = await lb.client.get("/api/server/workers")
    assert reply.json()["success"] is True
    [row] = reply.json()["data"]
    assert row["id"] == worker_id
    assert len(row["id"]) == 12
    assert row["model_name"] == "m"
    assert row["req_url_template"] == f"{url}/v1"
    assert row["api"] == "openai"
    assert row["owner"] == "team-a"
    assert row["weight"] == 2
    assert row["status"] in ("unknown", "healthy")  # "healthy" once the first probe answered
    assert row["inflight"] == 0
    assert row["latency_ms"] is None


async def test_the_listing_can_be_narrowed_to_one_model(lb: InProcess) -> None:
    await lb.register_openai("a", lb.worker("w1"))
    await lb.register_openai("b", lb.worker("w2"))
    assert [row["model_name"] for row in await listing(lb, "b")] == ["b"]
    assert await listing(lb, "unknown") == []


async def test_latency_is_recorded_once_the_worker_served(lb: InProcess) -> None:
    await lb.register_template("m", lb.worker("w1"))
    await lb.client.post("/api/v1/chat/completions", json={"input": "hi", "model_name": "m"})
    [row] = await listing(lb, "m")
    assert isinstance(row["latency_ms"], float)


async def test_registering_again_updates_instead_of_duplicating(lb: InProcess) -> None:
    url = lb.worker("w1")
    first = await lb.register(**template_registration("m", url))
    variant = f"{url}/api/generate".replace("http://", "HTTP://") + "/"
    second = await lb.register(
        **{**template_registration("m", url), "req_url_template": variant, "weight": 5}
    )
    assert first["id"] == second["id"]
    assert (first["created"], second["created"]) == (True, False)
    rows = await listing(lb, "m")
    assert len(rows) == 1
    assert rows[0]["weight"] == 5


async def test_secret_headers_are_redacted_in_the_listing(lb: InProcess) -> None:
    headers = {
        "Authorization": "Bearer sk-live",
        "X-Api-Key": "k",
        "X-Session-Token": "t",
        "X-Trace": "visible",
    }
    await lb.register_openai("m", lb.worker("w1"), header=headers)
    [row] = await listing(lb, "m")
    assert row["header"] == {
        "Authorization": "***",
        "X-Api-Key": "***",
        "X-Session-Token": "***",
        "X-Trace": "visible",
    }


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            {"req_url_template": "http://h/x", "body": {"i": "{USER_PROMPT}"}},
            "model_name is required",
        ),
        ({"model_name": "", "req_url_template": "http://h/x"}, "model_name"),
        (
            {"model_name": "m", "req_url_template": "file:///etc/passwd", "api": "openai"},
            "http:// or https://",
        ),
        (
            {"model_name": "m", "req_url_template": "http://h/x", "body": {"i": "fixed"}},
            "{USER_PROMPT}",
        ),
        (
            {"model_name": "m", "req_url_template": "http://h/x", "api": "openai", "surprise": 1},
            "unknown field 'surprise'",
        ),
        (
            {"model_name": "m", "req_url_template": "http://h/x", "api": "openai", "weight": "x"},
            "weight",
        ),
        ({"model_name": ["m"], "req_url_template": "http://h/x", "api": "openai"}, "model_name"),
    ],
)
async def test_a_bad_registration_gets_a_400_that_says_what_to_fix_and_changes_nothing(
    lb: InProcess, body: dict[str, object], fragment: str
) -> None:
    await lb.register_openai("kept", lb.worker("w1"))
    before = await listing(lb)
    reply = await lb.client.post("/api/server/register", json=body)
    assert reply.status_code == 400
    assert reply.json()["success"] is False
    assert fragment in reply.json()["msg"]
    assert await listing(lb) == before


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"text"', b'{"a": '])
@pytest.mark.parametrize("path", ["/api/server/register", "/api/server/offline"])
async def test_a_malformed_body_gets_a_400(lb: InProcess, path: str, raw: bytes) -> None:
    reply = await lb.client.post(path, content=raw, headers={"content-type": "application/json"})
    assert reply.status_code == 400
    assert reply.json()["success"] is False


async def test_offline_removes_the_worker(lb: InProcess) -> None:
    first, second = lb.worker("w1"), lb.worker("w2")
    await lb.register_template("m", first)
    await lb.register_template("m", second)
    url = f"{first}/api/generate"
    reply = await lb.client.post(
        "/api/server/offline", json={"model_name": "m", "req_url_template": url}
    )
    assert reply.status_code == 200
    assert reply.json() == {
        "success": True,
        "msg": f"remove llm worker(model_name=m, url={url}) succeed!",
    }
    assert [row["req_url_template"] for row in await listing(lb, "m")] == [f"{second}/api/generate"]


async def test_offline_of_an_unknown_worker_is_404(lb: InProcess) -> None:
    reply = await lb.client.post(
        "/api/server/offline",
        json={
            "model_name": "chatglm2-6b",
            "req_url_template": "https://xxx/openapi/xxx/inference/query",
        },
    )
    assert reply.status_code == 404
    assert reply.json() == {"success": False, "msg": "No llm worker to remove."}


async def test_offline_needs_both_fields(lb: InProcess) -> None:
    reply = await lb.client.post("/api/server/offline", json={"model_name": "m"})
    assert reply.status_code == 400
    assert "req_url_template" in reply.json()["msg"]


async def test_removal_lets_requests_in_flight_finish(lb: InProcess) -> None:
    url = lb.worker("slow", latency=0.1)
    await lb.register_template("m", url)
    call = asyncio.create_task(
        lb.client.post("/api/v1/chat/completions", json={"input": "slow one", "model_name": "m"})
    )
    await eventually(lambda: lb.fleet.workers["slow"].served.get("/api/generate", 0) == 1)
    removed = await lb.client.post(
        "/api/server/offline", json={"model_name": "m", "req_url_template": f"{url}/api/generate"}
    )
    assert removed.status_code == 200
    reply = await call
    assert reply.status_code == 200
    assert reply.json()["result"] == "[slow] slow one"


async def test_the_health_listing_counts_states_per_model_and_shows_each_probe() -> None:
    async with in_process(probe_interval=0.02) as lb:
        worker_id = await lb.register_openai("m", lb.worker("new"))

        async def health() -> dict[str, Any]:
            reply = await lb.client.get("/api/server/health")
            assert reply.json()["success"] is True
            data: dict[str, Any] = reply.json()["data"]["m"]
            return data

        [worker] = lb.parts.registry
        await eventually(lambda: worker.status == "healthy")
        data = await health()
        assert (data["healthy"], data["ejected"], data["unknown"]) == (1, 0, 0)
        [row] = data["workers"]
        assert row["id"] == worker_id
        assert row["status"] == "healthy"
        assert row["consecutive_failures"] == 0
        assert row["last_probe_latency_ms"] > 0
        assert row["last_probe_at"]
        assert row["since"]
        served = lb.fleet.workers["new"].served
        assert served["/v1/models"] >= 1  # probed the cheap way, not with a completion
        assert "/v1/chat/completions" not in served
