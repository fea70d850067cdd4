"""POST /api/server/register, GET /api/server/workers, POST /api/server/offline."""

import threading
import time

import httpx
import pytest

from balancer.fakes.processes import WorkerProcess
from tests.e2e.conftest import openai_registration, template_registration, unique_model


def test_register_replies_in_the_operategpt_envelope(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    reply = client.post("/api/server/register", json=template_registration(model, workers[0]))
    assert reply.status_code == 200
    body = reply.json()
    assert body["success"] is True
    assert body["msg"] == f"register LLM {model} succeed!"


def test_listing_is_a_json_array_with_live_fields(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    client.post(
        "/api/server/register",
        json=openai_registration(model, workers[0], weight=2, owner="team-a"),
    )
    data = client.get("/api/server/workers").json()
    assert data["success"] is True
    assert isinstance(data["data"], list)
    [row] = [w for w in data["data"] if w["model_name"] == model]
    assert row["req_url_template"] == f"{workers[0].url}/v1"
    assert row["api"] == "openai"
    assert row["owner"] == "team-a"
    assert row["weight"] == 2
    assert row["status"] in ("unknown", "healthy")  # "healthy" once the first probe answered
    assert row["inflight"] == 0
    assert row["latency_ms"] is None
    assert len(row["id"]) == 12


def test_latency_is_recorded_once_the_worker_served(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    client.post("/api/server/register", json=template_registration(model, workers[0]))
    client.post("/api/v1/chat/completions", json={"input": "hi", "model_name": model})
    [row] = client.get("/api/server/workers", params={"model_name": model}).json()["data"]
    assert isinstance(row["latency_ms"], float)


def test_registering_again_updates_instead_of_duplicating(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    url = f"{workers[0].url}/api/generate"
    variant = url.replace("http://", "HTTP://") + "/"
    first = client.post("/api/server/register", json=template_registration(model, workers[0]))
    second = client.post(
        "/api/server/register",
        json={**template_registration(model, workers[0]), "req_url_template": variant, "weight": 5},
    )
    assert first.json()["id"] == second.json()["id"]
    assert second.json()["success"] is True
    rows = client.get("/api/server/workers", params={"model_name": model}).json()["data"]
    assert len(rows) == 1
    assert rows[0]["weight"] == 5


def test_secret_headers_are_redacted_in_the_listing(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    headers = {
        "Authorization": "Bearer sk-live",
        "X-Api-Key": "k",
        "X-Session-Token": "t",
        "X-Trace": "visible",
    }
    client.post("/api/server/register", json=openai_registration(model, workers[0], header=headers))
    [row] = client.get("/api/server/workers", params={"model_name": model}).json()["data"]
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
def test_bad_registrations_get_a_4xx_that_says_what_to_fix(
    client: httpx.Client, body: dict[str, object], fragment: str
) -> None:
    def registered() -> list[tuple[str, str, str]]:
        rows = client.get("/api/server/workers").json()["data"]
        return [(w["id"], w["model_name"], w["req_url_template"]) for w in rows]

    before = registered()
    reply = client.post("/api/server/register", json=body)
    assert 400 <= reply.status_code < 500
    assert reply.json()["success"] is False
    assert fragment in reply.json()["msg"]
    assert registered() == before


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"text"', b'{"a": '])
def test_malformed_bodies_get_a_4xx(client: httpx.Client, raw: bytes) -> None:
    for path in ("/api/server/register", "/api/server/offline"):
        reply = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert reply.status_code == 400
        assert reply.json()["success"] is False


def test_offline_removes_the_worker(client: httpx.Client, workers: list[WorkerProcess]) -> None:
    model = unique_model()
    client.post("/api/server/register", json=template_registration(model, workers[0]))
    client.post("/api/server/register", json=template_registration(model, workers[1]))
    url = f"{workers[0].url}/api/generate"
    reply = client.post("/api/server/offline", json={"model_name": model, "req_url_template": url})
    assert reply.status_code == 200
    assert reply.json() == {
        "success": True,
        "msg": f"remove llm worker(model_name={model}, url={url}) succeed!",
    }
    rows = client.get("/api/server/workers", params={"model_name": model}).json()["data"]
    assert [r["req_url_template"] for r in rows] == [f"{workers[1].url}/api/generate"]


def test_offline_of_an_unknown_worker_is_404(client: httpx.Client) -> None:
    reply = client.post(
        "/api/server/offline",
        json={
            "model_name": "chatglm2-6b",
            "req_url_template": "https://xxx/openapi/xxx/inference/query",
        },
    )
    assert reply.status_code == 404
    assert reply.json() == {"success": False, "msg": "No llm worker to remove."}


def test_offline_needs_both_fields(client: httpx.Client) -> None:
    reply = client.post("/api/server/offline", json={"model_name": "m"})
    assert reply.status_code == 400
    assert "req_url_template" in reply.json()["msg"]


def test_removal_lets_requests_in_flight_finish(
    client: httpx.Client, fresh_worker: WorkerProcess
) -> None:
    model = unique_model()
    fresh_worker.control(latency=1.0)
    client.post("/api/server/register", json=template_registration(model, fresh_worker))
    result: dict[str, httpx.Response] = {}

    def call() -> None:
        result["r"] = httpx.post(
            f"{client.base_url}/api/v1/chat/completions",
            json={"input": "slow one", "model_name": model},
            timeout=10,
        )

    thread = threading.Thread(target=call)
    thread.start()
    while not fresh_worker.served().get("/api/generate"):
        time.sleep(0.02)
    removed = client.post(
        "/api/server/offline",
        json={"model_name": model, "req_url_template": f"{fresh_worker.url}/api/generate"},
    )
    assert removed.status_code == 200
    thread.join()
    assert result["r"].status_code == 200
    assert result["r"].json()["result"] == "[fresh] slow one"
