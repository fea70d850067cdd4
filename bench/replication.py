"""Replication: replicas sharing one registry on a real redis-server. Each change is a register
call on one replica (in turn); it is timed from just before that call until every other replica
has served an inference request with the new worker.

A figure, not a test: the tests only require it within a second (tests/e2e/test_scaleout.py).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from balancer.fakes.processes import BalancerProcess, Process, RedisProcess
from bench.client import percentile
from bench.harness import fake_worker

POLL_SECONDS = 0.0005
GIVE_UP_SECONDS = 10.0


@dataclass(frozen=True)
class Replication:
    replicas: int
    changes: int
    seconds: list[float]
    """One per change: register call to served by every other replica."""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.seconds, 99) * 1000

    @property
    def max_ms(self) -> float:
        return max(self.seconds) * 1000

    def row(self) -> str:
        return (
            f"| {self.replicas} | {self.changes} | {self.median_ms:.1f} | {self.p99_ms:.1f} | "
            f"{self.max_ms:.1f} |\n"
        )


def served(client: httpx.Client, model: str) -> bool:
    reply = client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
    )
    return reply.status_code == 200


def run(tmp: Path, *, replicas: int = 3, changes: int = 100) -> Replication:
    procs: list[Process] = []
    clients: list[httpx.Client] = []
    try:
        redis = RedisProcess(tmp)
        redis.start()
        procs.append(redis)
        worker, worker_url = fake_worker(tmp, "replicated")
        procs.append(worker)
        fleet = [
            BalancerProcess(tmp, env={"BALANCER_STORE": redis.url}, name=f"replica-{i}")
            for i in range(replicas)
        ]
        for balancer in fleet:
            balancer.start()
            procs.append(balancer)
        clients = [balancer.client() for balancer in fleet]
        seconds = []
        for i in range(changes):
            model = f"replicated-{i}"
            here = clients[i % replicas]
            others = [c for c in clients if c is not here]
            registration = {
                "model_name": model,
                "api": "openai",
                "req_url_template": f"{worker_url}/v1",
            }
            start = time.perf_counter()
            here.post("/api/server/register", json=registration).raise_for_status()
            waiting = list(others)
            while waiting:
                waiting = [c for c in waiting if not served(c, model)]
                if time.perf_counter() - start > GIVE_UP_SECONDS:
                    raise RuntimeError(f"{model} not served by every replica in 10 s")
                if waiting:
                    time.sleep(POLL_SECONDS)
            seconds.append(time.perf_counter() - start)
        return Replication(replicas, changes, seconds)
    finally:
        for client in clients:
            client.close()
        for proc in reversed(procs):
            proc.stop()


def section(result: Replication) -> str:
    """The section of bench/results/latest.md."""
    return (
        "\n## Replication (replicas on Redis)\n\n"
        f"{result.replicas} balancer replicas share one registry on a real redis-server. Each "
        "change is a register call on one replica (in turn), timed from just before the call "
        "until every other replica has served an inference request with the new worker (a poll "
        "is one request per replica still waiting, every 0.5 ms).\n\n"
        "| replicas | changes | median ms | p99 ms | max ms |\n|---:|---:|---:|---:|---:|\n"
        + result.row()
    )
