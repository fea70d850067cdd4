"""The log of `balancer serve`, as an operator reads it: every line JSON (uvicorn's own lines
too), no line per probe, and a request id only on that request's own events."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from balancer.fakes.processes import BalancerProcess, WorkerProcess
from tests.e2e.conftest import eventually, openai_registration

PROBE_EVENTS = ("worker_healthy", "worker_ejected", "worker_recovered")


def status(api: httpx.Client, url: str) -> str:
    [row] = api.get("/api/server/health").json()["data"]["m"]["workers"]
    assert row["req_url_template"] == url
    return str(row["status"])


def test_every_line_is_json_and_probes_carry_no_request_id(
    tmp_path: Path, spawn: Callable[..., WorkerProcess]
) -> None:
    worker = spawn("logged")
    url = f"{worker.url}/v1"
    balancer = BalancerProcess(
        tmp_path,
        env={
            "BALANCER_PROBE_INTERVAL": "0.2",
            "BALANCER_UNHEALTHY_THRESHOLD": "2",
            "BALANCER_HEALTHY_THRESHOLD": "2",
        },
    )
    balancer.start()
    try:
        with balancer.client() as api:
            # The request that registers the worker also adds its probe job.
            api.post(
                "/api/server/register",
                json=openai_registration("m", worker),
                headers={"X-Request-ID": "trace-register"},
            )
            eventually(lambda: status(api, url) == "healthy", within=3)
            for i in range(5):
                reply = api.post(
                    "/api/v1/chat/completions",
                    json={"input": "hi", "model_name": "m"},
                    headers={"X-Request-ID": f"trace-{i}"},
                )
                assert reply.status_code == 200
            worker.control(health_status=503)  # its probes fail: ejected, then back
            eventually(lambda: status(api, url) == "ejected", within=3)
            worker.control(health_status=200)
            eventually(lambda: status(api, url) == "healthy", within=3)
    finally:
        balancer.stop()

    lines = balancer.log.read_text().splitlines()
    events: list[dict[str, Any]] = [orjson.loads(line) for line in lines]  # each one JSON
    assert all(isinstance(e, dict) and e["event"] and e["level"] for e in events)
    uvicorn = [e["event"] for e in events if e.get("logger") == "uvicorn.error"]
    assert "Application startup complete." in uvicorn
    assert "Application shutdown complete." in uvicorn
    assert not [e for e in events if e.get("logger") == "httpx" or "HTTP Request" in e["event"]]

    probed = [e for e in events if e["event"] in PROBE_EVENTS]
    assert [e["event"] for e in probed] == list(PROBE_EVENTS)
    assert [e.get("request_id") for e in probed] == [None, None, None]
    asked = [e for e in events if e["event"] == "request" and e["path"].endswith("/completions")]
    assert [e["request_id"] for e in asked] == [f"trace-{i}" for i in range(5)]
    [registered] = [e for e in events if e["event"] == "worker_registered"]
    assert registered["request_id"] == "trace-register"
