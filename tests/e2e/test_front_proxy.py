"""The scale-out profile's front proxy, for real: Debian's nginx with deploy/compose/nginx.conf
(addresses made loopback ones) in front of two replicas on a real redis-server. A worker
registered through it is served by both replicas, streams come through whole, and a replica
that stops costs no request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from balancer.fakes.processes import (
    HOST,
    BalancerProcess,
    Process,
    RedisProcess,
    WorkerProcess,
    free_port,
)
from tests.e2e.conftest import eventually, openai_registration, unique_model

ROOT = Path(__file__).parents[2]
TOKEN = "front-proxy-test-token"


def nginx_conf(tmp: Path, port: int, replicas: list[BalancerProcess]) -> Path:
    """deploy/compose/nginx.conf with loopback addresses, run as this user in `tmp`."""
    conf = (ROOT / "deploy" / "compose" / "nginx.conf").read_text()
    for name, replica in zip(("balancer-a", "balancer-b"), replicas, strict=True):
        conf = conf.replace(f"{name}:8007", f"{HOST}:{replica.port}")
    conf = conf.replace("listen 8008;", f"listen {HOST}:{port};")
    conf = conf.replace(
        "http {",
        "http {\n"
        f"    access_log off;\n    client_body_temp_path {tmp}/body;\n"
        f"    proxy_temp_path {tmp}/proxy;\n",
    )
    path = tmp / "nginx.conf"
    path.write_text(f"daemon off;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log warn;\n{conf}")
    return path


@pytest.fixture(scope="module")
def front(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, list[BalancerProcess]]]:
    tmp = tmp_path_factory.mktemp("front-proxy")
    started: list[Process] = []
    try:
        redis = RedisProcess(tmp)
        redis.start()
        started.append(redis)
        env = {"BALANCER_STORE": redis.url, "BALANCER_ADMIN_TOKEN": TOKEN}
        replicas = [BalancerProcess(tmp, env=env, name=name) for name in ("a", "b")]
        for replica in replicas:
            replica.start()
            started.append(replica)
        port = free_port()
        nginx = Process(
            ["nginx", "-p", str(tmp), "-c", str(nginx_conf(tmp, port, replicas))],
            tmp / "nginx.log",
            ready_url=f"http://{HOST}:{port}/healthz",
        )
        nginx.start()
        started.append(nginx)
        yield f"http://{HOST}:{port}", replicas
    finally:
        for proc in reversed(started):
            proc.stop()


def test_through_the_proxy_a_registration_reaches_both_replicas_and_streams_come_whole(
    front: tuple[str, list[BalancerProcess]], workers: list[WorkerProcess]
) -> None:
    url, replicas = front
    model = unique_model("front")
    with httpx.Client(base_url=url, timeout=10) as client:
        register_everywhere(client, replicas, openai_registration(model, workers[0]))
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as stream:
            assert stream.status_code == 200
            lines = [line for line in stream.iter_lines() if line]
        assert lines[-1] == "data: [DONE]" and len(lines) > 2


def test_a_replica_that_stops_costs_no_request(
    front: tuple[str, list[BalancerProcess]], workers: list[WorkerProcess]
) -> None:
    url, replicas = front
    model = unique_model("front-stop")
    with httpx.Client(base_url=url, timeout=10) as client:
        register_everywhere(client, replicas, openai_registration(model, workers[1]))
        replicas[1].stop()
        chat = {"input": "x", "model_name": model}
        statuses = [
            client.post("/api/v1/chat/completions", json=chat).status_code for _ in range(20)
        ]
    assert statuses == [200] * 20


def register_everywhere(
    client: httpx.Client, replicas: list[BalancerProcess], registration: dict[str, Any]
) -> None:
    """Register through the proxy (`client`), as the admin; wait until every replica lists it."""
    admin = {"Authorization": f"Bearer {TOKEN}"}
    reply = client.post("/api/server/register", json=registration, headers=admin)
    assert reply.status_code == 200, reply.text
    model = registration["model_name"]
    eventually(
        lambda: all(replica_lists(replica, model) for replica in replicas),
        5,
        f"every replica lists {model}",
    )


def replica_lists(replica: BalancerProcess, model: str) -> bool:
    reply = httpx.get(
        f"{replica.url}/api/server/workers",
        params={"model_name": model},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    return bool(reply.json()["data"])
