"""The bundled monitoring stack, proven against a real Prometheus scraping a real balancer."""

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from balancer.fakes.processes import BalancerProcess, Process, WorkerProcess, free_port
from tests.e2e.conftest import openai_registration, template_registration

ROOT = Path(__file__).parents[2]
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
PANEL_TYPES = {"timeseries", "stat", "state-timeline", "row", "gauge", "table", "bargauge"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; scripts/install --system installs it")
    return path


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr) for every query of every panel."""
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets") or []:
                found.append((path.name, panel["title"], target["expr"]))
    return found


def rule_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load((ROOT / "prometheus" / "rules.yml").read_text())
    return [
        (rule["record"], rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
        if "record" in rule
    ]


def test_promtool_accepts_the_config_and_the_rules() -> None:
    promtool = tool("promtool")
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "prometheus/rules.yml"]):
        done = subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_json_is_what_the_code_generates() -> None:
    done = subprocess.run(
        [sys.executable, "grafana/dashboards.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboards_are_valid_for_current_grafana(path: Path) -> None:
    board = json.loads(path.read_text())
    assert board["schemaVersion"] >= 36
    assert board["uid"] and board["title"]
    [variable] = board["templating"]["list"]
    assert variable["name"] == "model" and variable["datasource"]["uid"] == "prometheus"
    for panel in board["panels"]:
        assert panel["type"] in PANEL_TYPES
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}
            assert panel["targets"], panel["title"]
            assert all('model=~"$model"' in t["expr"] for t in panel["targets"]), panel["title"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, BalancerProcess]]:
    """A balancer under load through real fake workers, scraped by a real Prometheus."""
    tmp = tmp_path_factory.mktemp("monitoring")
    prometheus = tool("prometheus")
    workers = [
        WorkerProcess(tmp, "steady", latency=0.01, chunks=6, chunk_delay=0.005),
        WorkerProcess(tmp, "flaky", latency=0.01, fail_rate=0.3),
    ]
    balancer = BalancerProcess(tmp, env={"BALANCER_PROBE_INTERVAL": "0.5"})
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(ROOT / "prometheus" / "rules.yml")]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{balancer.port}"]}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    server = Process(
        [
            prometheus,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp / "prometheus.log",
        ready_url=f"http://127.0.0.1:{port}/-/ready",
    )
    started: list[Process] = []
    try:
        for process in (*workers, balancer):
            process.start()
            started.append(process)
        server.spawn()
        started.append(server)
        server.wait_until_up(timeout=30)
        with balancer.client() as client:
            for worker in workers:
                client.post(
                    "/api/server/register",
                    json=openai_registration("chat", worker, strategy="round_robin"),
                )
            client.post("/api/server/register", json=template_registration("legacy", workers[0]))
            run_load(client, seconds=3)
        yield f"http://127.0.0.1:{port}", balancer
    finally:
        for process in reversed(started):
            process.stop()


def run_load(client: httpx.Client, seconds: float) -> None:
    """A bounded mixed load: plain and streamed chat, responses, OperateGPT calls, an unknown
    model."""

    def one(i: int) -> None:
        if i % 4 == 0:
            with client.stream(
                "POST",
                "/v1/chat/completions",
                json={
                    "model": "chat",
                    "stream": True,
                    "messages": [{"role": "user", "content": f"stream {i}"}],
                },
            ) as reply:
                reply.read()
        elif i % 4 == 1:
            client.post(
                "/api/v1/chat/completions", json={"input": f"q {i}", "model_name": "legacy"}
            )
        elif i % 8 == 2:
            client.post(
                "/v1/chat/completions",
                json={"model": "chat", "messages": [{"role": "user", "content": f"plain {i}"}]},
            )
        elif i % 4 == 2:
            client.post("/v1/responses", json={"model": "chat", "input": f"plain {i}"})
        else:
            client.post("/api/v1/chat/completions", json={"input": "x", "model_name": "nope"})

    deadline = time.monotonic() + seconds
    i = 0
    with ThreadPoolExecutor(4) as pool:
        while time.monotonic() < deadline:
            list(pool.map(one, range(i, i + 8)))
            i += 8


def instant(prometheus: str, expr: str) -> list[Any]:
    expr = expr.replace("$__rate_interval", "1m").replace("$model", ".*")
    reply = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert reply["status"] == "success", reply
    return list(reply["data"]["result"])


def wait_for_data(prometheus: str, expr: str, within: float = 20.0) -> list[Any]:
    deadline = time.monotonic() + within
    while True:
        result = instant(prometheus, expr)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


@pytest.mark.parametrize(("record", "expr"), rule_expressions(), ids=lambda v: str(v)[:60])
def test_every_recording_rule_returns_data(
    stack: tuple[str, BalancerProcess], record: str, expr: str
) -> None:
    prometheus, _ = stack
    assert wait_for_data(prometheus, record), f"recording rule {record} has no data"


@pytest.mark.parametrize(("board", "title", "expr"), dashboard_queries(), ids=lambda v: str(v)[:50])
def test_every_dashboard_query_returns_data(
    stack: tuple[str, BalancerProcess], board: str, title: str, expr: str
) -> None:
    prometheus, _ = stack
    assert wait_for_data(prometheus, expr), f"{board} / {title}: no data for {expr}"


def test_the_alert_rules_load(stack: tuple[str, BalancerProcess]) -> None:
    prometheus, _ = stack
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    alerts = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert alerts == {
        "BalancerModelWithoutHealthyWorker",
        "BalancerHighErrorRatio",
        "BalancerLatencyP99Burn",
        "BalancerStoreUnavailable",
    }
    assert all(r["health"] == "ok" for g in groups for r in g["rules"])


def test_requests_are_counted_by_endpoint(stack: tuple[str, BalancerProcess]) -> None:
    prometheus, _ = stack
    expr = "sum by (endpoint) (balancer_requests_total)"
    wait_for_data(prometheus, expr)
    endpoints = {series["metric"]["endpoint"] for series in instant(prometheus, expr)}
    assert {"/v1/chat/completions", "/v1/responses", "/api/v1/chat/completions"} <= endpoints
