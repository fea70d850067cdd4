"""The service as a process: persistence across SIGKILL, SIGTERM drain, config, security, logs."""

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
            rows = client.get("/api/server/workers").json()["data"]
            assert sorted(r["api"] for r in rows) == ["openai", "template"]
            answers = {
                client.post(
                    "/api/v1/chat/completions", json={"input": "x", "model_name": "static"}
                ).json()["result"]
                for _ in range(4)
            }
            assert answers == {"[w1] x", "[w2] x"}
            # admin_token came from the file
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


def test_admin_token_guards_register_and_offline(
    tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    balancer = BalancerProcess(tmp_path, env={"BALANCER_ADMIN_TOKEN": "t0ken"})
    balancer.start()
    try:
        with balancer.client() as client:
            registration = openai_registration("guarded", workers[0])
            assert client.post("/api/server/register", json=registration).status_code == 401
            wrong = client.post(
                "/api/server/register", json=registration, headers={"Authorization": "Bearer nope"}
            )
            assert wrong.status_code == 401
            assert wrong.json()["success"] is False
            right = {"Authorization": "Bearer t0ken"}
            assert (
                client.post("/api/server/register", json=registration, headers=right).status_code
                == 200
            )
            offline = {"model_name": "guarded", "req_url_template": f"{workers[0].url}/v1"}
            assert client.post("/api/server/offline", json=offline).status_code == 401
            assert (
                client.post("/api/server/offline", json=offline, headers=right).status_code == 200
            )
    finally:
        balancer.stop()


def test_without_a_token_admin_is_loopback_only_with_a_warning(balancer: BalancerProcess) -> None:
    events = [
        json.loads(line) for line in balancer.log.read_text().splitlines() if line.startswith("{")
    ]
    assert any(e["event"] == "admin_open_to_loopback" and e["level"] == "warning" for e in events)


def test_api_keys_guard_inference(tmp_path: Path, workers: list[WorkerProcess]) -> None:
    import openai

    balancer = BalancerProcess(tmp_path, env={"BALANCER_API_KEYS": "k1,k2"})
    balancer.start()
    try:
        with balancer.client() as client:
            client.post("/api/server/register", json=openai_registration("keyed", workers[0]))
            seed = {"input": "x", "model_name": "keyed"}
            assert client.post("/api/v1/chat/completions", json=seed).status_code == 401
            ok = client.post(
                "/api/v1/chat/completions", json=seed, headers={"Authorization": "Bearer k2"}
            )
            assert ok.status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{balancer.url}/v1", api_key="bad").models.list()
        sdk = openai.OpenAI(base_url=f"{balancer.url}/v1", api_key="k1")
        assert "keyed" in {m.id for m in sdk.models.list()}
    finally:
        balancer.stop()


def test_every_call_is_logged_with_a_request_id(
    balancer: BalancerProcess, client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    client.post("/api/server/register", json=openai_registration("logged", workers[0]))
    reply = client.post(
        "/api/v1/chat/completions",
        json={"input": "x", "model_name": "logged"},
        headers={"X-Request-ID": "trace-123"},
    )
    assert reply.headers["X-Request-ID"] == "trace-123"
    generated = client.get("/api/server/workers").headers["X-Request-ID"]
    assert len(generated) == 32
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        events = [
            json.loads(line)
            for line in balancer.log.read_text().splitlines()
            if line.startswith("{")
        ]
        mine = [e for e in events if e.get("request_id") == "trace-123" and e["event"] == "request"]
        if mine:
            break
        time.sleep(0.05)
    assert mine[0]["model"] == "logged"
    assert mine[0]["worker"] == reply.headers["X-Balancer-Worker"]
    assert mine[0]["status"] == 200
    assert isinstance(mine[0]["latency_ms"], float)


def test_secret_headers_never_reach_the_log(
    balancer: BalancerProcess, client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    client.post(
        "/api/server/register",
        json=openai_registration(
            "secretive", workers[0], header={"Authorization": "Bearer sk-do-not-log"}
        ),
    )
    assert "sk-do-not-log" not in balancer.log.read_text()
