"""A fuzzer nobody here wrote: schemathesis reads `/openapi.json` of a running `balancer serve`
and sends every route what the document allows, and what it does not. No reply may be a 5xx,
and the registry must be as it was.

The fuzzer is not given the admin token (BALANCER_ADMIN_TOKEN is set), so every admin write
it sends is a 401: nothing it does may change the registry, and the test shows it did not.
The inference bodies' model names are narrowed to the registered model, so that the generated
requests reach its workers (an OpenAI one and a template one) instead of stopping at a 404.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson

from balancer.fakes.processes import BalancerProcess, WorkerProcess
from balancer.routing import ROUTES
from balancer.schemas import (
    OPERATIONS,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    OperateGPTRequest,
)

MODEL = "fuzzed"
EXAMPLES = 25
"""Generated cases per operation (the coverage phase adds its own): the run takes seconds."""
SEED = 20261129

# Readiness for a model without a healthy worker is a 503 by design (`?model=` anything).
CONFIG = """
[[operations]]
include-path = "/readyz"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
"""

_NARROWED = {
    ChatCompletionRequest: "model",
    CompletionRequest: "model",
    EmbeddingRequest: "model",
    OperateGPTRequest: "model_name",
}
_LIVE_FIELDS = ("status", "inflight", "latency_ms")


def registrations(client: httpx.Client) -> list[dict[str, Any]]:
    """The workers listing, without what changes as requests come and go."""
    workers: list[dict[str, Any]] = client.get("/api/server/workers").json()["data"]
    return [{k: v for k, v in w.items() if k not in _LIVE_FIELDS} for w in workers]


def narrowed(document: dict[str, Any]) -> dict[str, Any]:
    """The document with the inference bodies' model names limited to MODEL."""
    schemas = document["components"]["schemas"]
    for model, field in _NARROWED.items():
        schemas[model.__name__]["properties"][field] = {"type": "string", "enum": [MODEL]}
    return document


def test_schemathesis_finds_no_5xx_and_cannot_change_the_registry(tmp_path: Path) -> None:
    worker = WorkerProcess(tmp_path, "fuzz")
    token = secrets.token_urlsafe(16)
    balancer = BalancerProcess(tmp_path, env={"BALANCER_ADMIN_TOKEN": token})
    worker.start()
    balancer.start()
    try:
        with balancer.client(headers={"Authorization": f"Bearer {token}"}) as admin:
            for registration in (
                {"api": "openai", "req_url_template": f"{worker.url}/v1"},
                {
                    "req_url_template": f"{worker.url}/api/generate",
                    "body": {"input": "{USER_PROMPT}", "temperature": "{MODEL_TEMPERATURE}"},
                    "response_extract": "data.items[].attributes.answer",
                },
            ):
                # Round robin: both workers get their share of what the fuzzer sends.
                fields = {"model_name": MODEL, "strategy": "round_robin", **registration}
                reply = admin.post("/api/server/register", json=fields)
                assert reply.status_code == 200, reply.text
            document = admin.get("/openapi.json").json()
            before = registrations(admin)
        # Every POST that takes a body (a cancel takes none: test_schemas.BODYLESS_POSTS).
        undescribed = [
            f"{route.method} {route.path}"
            for route in ROUTES
            if route.method == "POST"
            and OPERATIONS[(route.method, route.path)].body is not None
            and "requestBody" not in document["paths"][route.path]["post"]
        ]
        assert not undescribed, f"no request body in /openapi.json for {undescribed}"
        schema = tmp_path / "openapi.json"
        schema.write_bytes(orjson.dumps(narrowed(document)))
        config = tmp_path / "schemathesis.toml"
        config.write_text(CONFIG)
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(config),
                "run",
                str(schema),
                "--url",
                balancer.url,
                "--checks",
                "not_a_server_error",
                "--max-examples",
                str(EXAMPLES),
                "--seed",
                str(SEED),
                "--workers",
                "1",
                "--generation-database",
                "none",
                "--request-timeout",
                "10",
                "--no-color",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=50,
        )
        assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
        # Every route of the table was in the document, and was tried.
        assert f"Tested: {len(ROUTES)}" in run.stdout, run.stdout[-3000:]
        with balancer.client(headers={"Authorization": f"Bearer {token}"}) as admin:
            assert registrations(admin) == before
        # The generated requests did reach both workers. (Some of the fuzzer's bodies make the
        # fake worker itself fail with a 500; the balancer then tries the other worker.)
        served = worker.served()
        openai_paths = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
        assert sum(served.get(path, 0) for path in openai_paths) > 0, served
        assert served.get("/api/generate", 0) > 0, served
    finally:
        balancer.stop()
        worker.stop()
