"""The balancer's own cost, side by side with nginx and with calling a worker directly.

The proxy under test runs alone on core 0; wrk, the SSE client and the workers share core 1.
Proxies take turns within each round, so noise on the machine hits them alike. Per cell: req/s,
p50/p99, the p50 added over a direct call, and the proxy's CPU time per request from /proc.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.harness import (
    LOAD_CORE,
    Process,
    balancer,
    children,
    cpu_seconds,
    fake_worker,
    nginx,
    register,
    tree,
    wrk,
)

BODY = '{"model":"bench","messages":[{"role":"user","content":"hello, how are you?"}]}'
PATH = "/v1/chat/completions"


@dataclass
class Cell:
    label: str
    proxy: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float | None
    errors: int
    added_p50_ms: float | None = None


@dataclass
class Proxy:
    name: str
    url: str
    pids: list[int]


def measure(proxy: Proxy, *, connections: int, seconds: float, tmp: Path):  # type: ignore[no-untyped-def]
    before = cpu_seconds(proxy.pids) if proxy.pids else 0.0
    result = wrk(proxy.url + PATH, BODY, connections=connections, seconds=seconds, tmp=tmp)
    cpu = (cpu_seconds(proxy.pids) - before) if proxy.pids else None
    per_request = None if cpu is None or not result.requests else cpu / result.requests * 1e6
    return result, per_request


def median_cells(label: str, name: str, runs: list[tuple[object, float | None]]) -> Cell:
    results = [r for r, _ in runs]
    cpus = [c for _, c in runs if c is not None]
    return Cell(
        label,
        name,
        statistics.median(r.requests_per_second for r in results),  # type: ignore[attr-defined]
        statistics.median(r.p50_ms for r in results),  # type: ignore[attr-defined]
        statistics.median(r.p99_ms for r in results),  # type: ignore[attr-defined]
        statistics.median(cpus) if cpus else None,
        sum(r.errors for r in results),  # type: ignore[attr-defined]
    )


def run(tmp: Path, *, seconds: float = 5.0, rounds: int = 3) -> dict[str, object]:
    procs: list[Process] = []
    try:
        w1, url1 = fake_worker(tmp, "w1")
        w2, url2 = fake_worker(tmp, "w2")
        procs += [w1, w2]
        lb, lb_url = balancer(tmp)
        procs.append(lb)
        register(lb_url, "bench", [url1, url2], strategy="least_latency")
        ng, ng_url = nginx(tmp, [url1, url2])
        procs.append(ng)
        # Two processes need two cores: this one shares core 1 with wrk and the workers.
        lb2, lb2_url = balancer(tmp, name="balancer-x2", processes=2, cores="0,1")
        procs.append(lb2)
        time.sleep(1.5)  # both processes have loaded the registry
        register(lb2_url, "bench", [url1, url2], strategy="least_latency")
        time.sleep(1.5)  # ... and seen the registration
        proxies = [
            Proxy("direct", url1, []),
            Proxy("nginx", ng_url, children(ng.pid) or [ng.pid]),
            Proxy("balancer", lb_url, [lb.pid]),
            Proxy("balancer --workers 2", lb2_url, tree(lb2.pid)),
        ]
        cells: list[Cell] = []
        for latency in (0.0, 0.05):
            for url in (url1, url2):
                httpx.post(url + "/_control", json={"latency": latency}).raise_for_status()
            for connections in (16, 64):
                label = f"{int(latency * 1000)} ms upstream, {connections} conns"
                runs: dict[str, list[tuple[object, float | None]]] = {p.name: [] for p in proxies}
                # Warm every proxy's pools first, then interleave the counted runs.
                for proxy in proxies:
                    measure(proxy, connections=connections, seconds=1, tmp=tmp)
                for _ in range(rounds):
                    for proxy in proxies:
                        runs[proxy.name].append(
                            measure(proxy, connections=connections, seconds=seconds, tmp=tmp)
                        )
                row = [median_cells(label, p.name, runs[p.name]) for p in proxies]
                direct = row[0].p50_ms
                for cell in row:
                    cell.added_p50_ms = cell.p50_ms - direct
                cells += row
        streams = run_streams(
            proxies[:3], tmp, seconds=seconds, rounds=rounds, worker_urls=[url1, url2]
        )
        return {"cells": cells, "streams": streams}
    finally:
        for proc in reversed(procs):
            proc.stop()


def run_streams(
    proxies: list[Proxy], tmp: Path, *, seconds: float, rounds: int, worker_urls: list[str]
) -> list[dict[str, object]]:
    for url in worker_urls:
        httpx.post(
            url + "/_control", json={"latency": 0.0, "chunks": 16, "chunk_delay": 0.005}
        ).raise_for_status()
    samples: dict[str, list[dict[str, float]]] = {p.name: [] for p in proxies}
    for _ in range(rounds):
        for proxy in proxies:
            before = cpu_seconds(proxy.pids) if proxy.pids else 0.0
            done = subprocess.run(
                [
                    "taskset",
                    "-c",
                    LOAD_CORE,
                    sys.executable,
                    "-m",
                    "bench.sse_client",
                    proxy.url + PATH,
                    str(seconds),
                    "16",
                ],
                capture_output=True,
                text=True,
                timeout=seconds + 60,
                check=True,
            )
            result = json.loads(done.stdout)
            if proxy.pids and result["streams"]:
                result["cpu_us"] = (cpu_seconds(proxy.pids) - before) / result["streams"] * 1e6
            samples[proxy.name].append(result)
    rows = []
    for name, runs in samples.items():
        row: dict[str, object] = {"proxy": name}
        for key in ("streams_per_second", "ttfb_ms", "ttft_ms", "total_ms", "cpu_us"):
            values = [r[key] for r in runs if key in r]
            row[key] = statistics.median(values) if values else None
        row["errors"] = sum(r["errors"] for r in runs)
        rows.append(row)
    direct = rows[0]["ttft_ms"]
    for row in rows:
        row["added_ttft_ms"] = row["ttft_ms"] - direct  # type: ignore[operator]
    return rows
