"""The service as a process: persistence across SIGKILL, SIGTERM drain, the config file, a bad
configuration. Auth and logging are specified in-process (tests/test_auth.py,
tests/test_middleware.py)."""

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from balancer.fakes.processes import BalancerProcess, WorkerProcess
from tests.e2e.conftest import openai_registration, template_registration


def test_sigkill_and_restart_keeps_every_worker(
    tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    first = BalancerProcess(tmp_path)
    first.start()
    with first.client() as client:
        for i in range(20):
            worker = workers[i % 3]
            reply = client.post(
                "/api/server/register",
                json={
                    **template_registration(f"model-{i % 4}", worker),
                    "req_url_template": f"{worker.url}/api/generate?replica={i}",
                },
            )
            assert reply.status_code == 200
        client.post(
            "/api/server/offline",
            json={
                "model_name": "model-0",
                "req_url_template": f"{workers[0].url}/api/generate?replica=0",
            },
        )
        before = client.get("/api/server/workers").json()["data"]
    first.signal(signal.SIGKILL)
    first.wait()
    second = BalancerProcess(tmp_path, db=first.db, port=first.port)
    second.start()
    try:
        with second.client() as client:
            after = client.get("/api/server/workers").json()["data"]
            assert len(after) == 19
            assert [(w["id"], w["model_name"], w["req_url_template"]) for w in after] == [
                (w["id"], w["model_name"], w["req_url_template"]) for w in before
            ]
            reply = client.post(
                "/api/v1/chat/completions", json={"input": "after restart", "model_name": "model-1"}
            )
            assert reply.json()["success"] is True
    finally:
        second.stop()


def test_sigterm_drains_requests_in_flight_and_exits_0(
    tmp_path: Path, fresh_worker: WorkerProcess
) -> None:
    balancer = BalancerProcess(tmp_path)
    balancer.start()
    fresh_worker.control(latency=1.0)
    with balancer.client() as client:
        client.post("/api/server/register", json=template_registration("slow", fresh_worker))
    result: dict[str, httpx.Response] = {}

    def call() -> None:
        result["r"] = httpx.post(
            f"{balancer.url}/api/v1/chat/completions",
            json={"input": "finish me", "model_name": "slow"},
            timeout=10,
        )

    thread = threading.Thread(target=call)
    thread.start()
    while not fresh_worker.served().get("/api/generate"):
        time.sleep(0.02)
    balancer.signal(signal.SIGTERM)
    thread.join()
    assert result["r"].status_code == 200
    assert result["r"].json()["result"] == "[fresh] finish me"
    assert balancer.wait() == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{balancer.url}/healthz", timeout=1)


def test_config_file_settings_and_static_workers(
    tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    config = tmp_path / "balancer.yaml"
    config.write_text(
        "admin_token: from-file\n"
        "probe_interval: 2.5\n"
        "workers:\n"
        f"  - model_name: static\n    api: openai\n    req_url_template: {workers[0].url}/v1\n"
        "    strategy: round_robin\n"
        f"  - model_name: static\n    body: {{input: '{{USER_PROMPT}}'}}\n"
        f"    req_url_template: {workers[1].url}/api/generate\n"
        "    response_extract: data.items[].attributes.answer\n"
    )
    balancer = BalancerProcess(tmp_path, args=["--config", str(config)])
    balancer.start()
    try:
        with balancer.client() as client:
            # admin_token came from the file: the listing needs it too
            assert client.get("/api/server/workers").status_code == 401
            token = {"Authorization": "Bearer from-file"}
            rows = client.get("/api/server/workers", headers=token).json()["data"]
            assert sorted(r["api"] for r in rows) == ["openai", "template"]
            answers = {
                client.post(
                    "/api/v1/chat/completions", json={"input": "x", "model_name": "static"}
                ).json()["result"]
                for _ in range(4)
            }
            assert answers == {"[w1] x", "[w2] x"}
            denied = client.post("/api/server/register", json=openai_registration("m", workers[0]))
            assert denied.status_code == 401
    finally:
        balancer.stop()


@pytest.mark.parametrize(
    ("env", "config", "message"),
    [
        ({"BALANCER_PROBE_INTERVAL": "soon"}, None, "probe_interval"),
        ({}, "typo_setting: 1\n", "unknown setting 'typo_setting'"),
        ({}, "workers:\n  - model_name: x\n", "workers[0]"),
        ({"BALANCER_STORE": "mysql://db"}, None, "store"),
    ],
)
def test_bad_configuration_is_one_log_line_and_exit_1(
    tmp_path: Path, env: dict[str, str], config: str | None, message: str
) -> None:
    args = []
    if config is not None:
        (tmp_path / "c.yaml").write_text(config)
        args = ["--config", str(tmp_path / "c.yaml")]
    balancer = BalancerProcess(tmp_path, env=env, args=args)
    balancer.spawn()
    assert balancer.wait() == 1
    lines = [json.loads(line) for line in balancer.log.read_text().splitlines() if line.strip()]
    assert lines[-1]["event"] == "bad_configuration"
    assert message in lines[-1]["error"]
    assert "Traceback" not in balancer.log.read_text()
