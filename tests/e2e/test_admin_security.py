"""Nothing a web page can do, and secrets stay secret: against `balancer serve` on 127.0.0.1,
run without an admin token (as on a developer's own machine)."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from balancer.fakes.processes import BalancerProcess, WorkerProcess, free_port
from tests.e2e.conftest import unique_model


@pytest.fixture(scope="module")
def open_balancer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BalancerProcess]:
    balancer = BalancerProcess(
        tmp_path_factory.mktemp("admin"),
        env={"BALANCER_ALLOWED_HOSTS": "lb.internal", "BALANCER_PROBE_INTERVAL": "0.3"},
    )
    balancer.start()
    yield balancer
    balancer.stop()


def workers_of(balancer: BalancerProcess) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = httpx.get(f"{balancer.url}/api/server/workers").json()["data"]
    return data


def registration(model: str) -> bytes:
    return json.dumps(
        {"model_name": model, "api": "openai", "req_url_template": "http://10.0.0.9/v1"}
    ).encode()


def refused(reply: httpx.Response, status: int, balancer: BalancerProcess, model: str) -> None:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["success"] is False and isinstance(body["msg"], str)  # the OperateGPT envelope
    assert all(w["model_name"] != model for w in workers_of(balancer))


def test_a_no_cors_post_as_text_plain_is_a_415(open_balancer: BalancerProcess) -> None:
    """What any web page can send to 127.0.0.1 without a preflight."""
    model = unique_model()
    reply = httpx.post(
        f"{open_balancer.url}/api/server/register",
        content=registration(model),
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    refused(reply, 415, open_balancer, model)


def test_a_request_from_another_origin_is_a_403(open_balancer: BalancerProcess) -> None:
    model = unique_model()
    reply = httpx.post(
        f"{open_balancer.url}/api/server/register",
        content=registration(model),
        headers={"Content-Type": "application/json", "Origin": "https://evil.example"},
    )
    refused(reply, 403, open_balancer, model)
    same = httpx.post(
        f"{open_balancer.url}/api/server/register",
        content=registration(model),
        headers={"Content-Type": "application/json", "Origin": open_balancer.url},
    )
    assert same.status_code == 200, same.text


def test_without_a_token_a_host_that_is_not_loopback_is_a_403(
    open_balancer: BalancerProcess,
) -> None:
    """A DNS-rebound page talks to us under its own name."""
    model = unique_model()
    headers = {"Content-Type": "application/json", "Host": f"attacker.example:{open_balancer.port}"}
    reply = httpx.post(
        f"{open_balancer.url}/api/server/offline", content=registration(model), headers=headers
    )
    refused(reply, 403, open_balancer, model)
    headers["Host"] = f"lb.internal:{open_balancer.port}"  # BALANCER_ALLOWED_HOSTS
    allowed = httpx.post(
        f"{open_balancer.url}/api/server/register", content=registration(model), headers=headers
    )
    assert allowed.status_code == 200, allowed.text


def test_credentials_and_secret_query_parameters_never_show(
    open_balancer: BalancerProcess, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    down = free_port()  # nothing listens: probes and requests fail, and say so
    url = f"http://alice:s3cr3t-pw@127.0.0.1:{down}/v1?api_key=k3y-v4lue&region=eu"
    with open_balancer.client() as client:
        reply = client.post(
            "/api/server/register",
            json={"model_name": model, "api": "openai", "req_url_template": url},
        )
        assert reply.status_code == 200, reply.text
        listing = client.get("/api/server/workers", params={"model_name": model}).text
        inference = client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "x"}]},
        )
        health = client.get("/api/server/health").json()["data"][model]["workers"][0]
        for _ in range(30):
            if health["last_error"]:
                break
            health = client.get("/api/server/health").json()["data"][model]["workers"][0]
        offline = client.post(
            "/api/server/offline", json={"model_name": model, "req_url_template": url}
        )
    assert inference.status_code == 503
    assert "127.0.0.1" not in inference.text  # the worker by its id, never its URL
    assert "region=eu" in listing and "***" in listing
    assert health["last_error"] and "***" in health["req_url_template"]
    for shown in (listing, inference.text, json.dumps(health), offline.text):
        assert "s3cr3t-pw" not in shown and "k3y-v4lue" not in shown
    log = open_balancer.log.read_text()
    assert "s3cr3t-pw" not in log and "k3y-v4lue" not in log


def test_the_store_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    balancer = BalancerProcess(tmp_path)
    balancer.start()
    try:
        mode = stat.S_IMODE(balancer.db.stat().st_mode)
    finally:
        balancer.stop()
    assert mode == 0o600, oct(mode)
