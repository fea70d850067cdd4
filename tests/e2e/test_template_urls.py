"""A registration cannot be made to send prompts elsewhere or to forge requests: a GET
template's placeholders fill only the path and the query, a prompt cannot change the path, and
registered headers cannot inject lines or reframe the request. Against `balancer serve` and a
fake worker process, whose `/_stats` counts the paths it was asked for."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from balancer.fakes.processes import WorkerProcess
from tests.e2e.conftest import unique_model

HOSTILE_PROMPTS = [
    "../../admin?x=1#f",
    "a&input=evil&model=other",
    "/etc/passwd",
    "x#fragment",
    "?",
    "%2e%2e%2F",
    "100% sure + a space",
]


def ask(client: httpx.Client, model: str, prompt: str) -> httpx.Response:
    return client.post("/api/v1/chat/completions", json={"input": prompt, "model_name": model})


def asked(worker: WorkerProcess) -> dict[str, int]:
    """The paths the worker was asked for, its health checks (`/`, `/health`) left out."""
    return {path: n for path, n in worker.served().items() if path not in ("/", "/health")}


def listing(client: httpx.Client) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = client.get("/api/server/workers").json()["data"]
    return data


def test_a_hostile_prompt_arrives_intact_in_one_query_value_and_the_path_is_unchanged(
    client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    worker = spawn("get")
    model = unique_model("get")
    reply = client.post(
        "/api/server/register",
        json={
            "model_name": model,
            "req_type": "GET",
            "req_url_template": f"{worker.url}/api/generate?input={{USER_PROMPT}}&model=fixed",
            # The fake worker echoes the query it parsed: exactly what arrived.
            "response_extract": "data.items[].attributes.request",
        },
    )
    assert reply.status_code == 200, reply.text
    for prompt in HOSTILE_PROMPTS:
        answer = ask(client, model, prompt)
        assert answer.status_code == 200, answer.text
        assert orjson.loads(answer.json()["result"]) == {"input": prompt, "model": "fixed"}
    assert asked(worker) == {"/api/generate": len(HOSTILE_PROMPTS)}


def test_a_hostile_prompt_in_a_path_segment_stays_in_it(
    client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    """`/`, `?` and `#` are encoded, so the worker sees the prompt between the template's own
    segments, its dots not resolved and no query or fragment started."""
    worker = spawn("path")
    model = unique_model("path")
    url = f"{worker.url}/api/{{USER_PROMPT}}/generate"
    reply = client.post(
        "/api/server/register",
        json={"model_name": model, "req_type": "GET", "req_url_template": url},
    )
    assert reply.status_code == 200, reply.text
    ask(client, model, "../../admin?x=1#f")  # the fake worker has no such route: a 404
    # The worker's server decodes the path it shows its application: one segment on the wire.
    assert asked(worker) == {"/api/../../admin?x=1#f/generate": 1}


@pytest.mark.parametrize("prompt", ["..", "."])
def test_a_prompt_of_dots_cannot_climb_out_of_the_path(
    client: httpx.Client, spawn: Callable[..., WorkerProcess], prompt: str
) -> None:
    """HTTP clients resolve `..` segments, percent-encoded or not, so such a prompt is refused
    rather than sent to another path of the worker."""
    worker = spawn("dots")
    model = unique_model("dots")
    url = f"{worker.url}/api/{{USER_PROMPT}}/generate"
    reply = client.post(
        "/api/server/register",
        json={"model_name": model, "req_type": "GET", "req_url_template": url},
    )
    assert reply.status_code == 200, reply.text
    answer = ask(client, model, prompt)
    assert answer.status_code == 400, answer.text
    assert "changes the path" in answer.json()["msg"]
    assert asked(worker) == {}


@pytest.mark.parametrize(
    ("template", "part"),
    [
        ("http://{USER_PROMPT}/api/generate", "host"),
        ("http://127.0.0.1:{MODEL_TEMPERATURE}/api/generate?input={USER_PROMPT}", "port"),
        ("{USER_PROMPT}://127.0.0.1/api/generate", "scheme"),
        ("http://{MODEL_NAME}.example/api/generate?input={USER_PROMPT}", "host"),
    ],
)
def test_a_placeholder_in_the_scheme_host_or_port_is_refused(
    client: httpx.Client, template: str, part: str
) -> None:
    before = listing(client)
    reply = client.post(
        "/api/server/register",
        json={"model_name": unique_model("where"), "req_type": "GET", "req_url_template": template},
    )
    assert reply.status_code == 400, reply.text
    assert f"may only fill the URL's path or query, not its {part}" in reply.json()["msg"]
    assert listing(client) == before


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"X-Tenant": "a\r\nX-Injected: 1"}, "the value of X-Tenant contains CR, LF"),
        ({"X-Tenant": "a\nb"}, "the value of X-Tenant contains CR, LF"),
        ({"Authorization": "Bearer sk\r\n"}, "the value of Authorization contains CR, LF"),
        ({"Content-Length": "0"}, "header: Content-Length cannot be registered"),
        ({"transfer-encoding": "chunked"}, "header: transfer-encoding cannot be registered"),
        ({"HOST": "internal.example"}, "header: HOST cannot be registered"),
        ({"Connection": "close"}, "header: Connection cannot be registered"),
    ],
)
def test_header_injection_and_framing_headers_are_refused_at_registration(
    client: httpx.Client, workers: list[WorkerProcess], header: dict[str, str], message: str
) -> None:
    before = listing(client)
    reply = client.post(
        "/api/server/register",
        json={
            "model_name": unique_model("hdr"),
            "api": "openai",
            "req_url_template": f"{workers[0].url}/v1",
            "header": header,
        },
    )
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["msg"]
    assert "sk" not in reply.json()["msg"]
    assert listing(client) == before
