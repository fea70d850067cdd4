"""Probe scale (1,000 probed workers) and a soak (RSS over minutes of steady load and churn)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.harness import (
    Process,
    WrkResult,
    balancer,
    cpu_seconds,
    fake_worker,
    register,
    rss_bytes,
    wrk,
)
from bench.overhead import BODY
from bench.streams import PATH


@dataclass
class ProbeScale:
    workers: int
    idle_cpu_percent_without: float
    idle_cpu_percent_with: float
    probes_per_second: float
    cpu_us_per_probe: float
    without: WrkResult
    with_probed: WrkResult


def probe_scale(
    tmp: Path, *, n: int = 1000, idle_seconds: float = 15.0, load_seconds: float = 5.0
) -> ProbeScale:
    procs: list[Process] = []
    try:
        target, target_url = fake_worker(tmp, "probed")
        w1, url1 = fake_worker(tmp, "scale-w1")
        w2, url2 = fake_worker(tmp, "scale-w2")
        procs += [target, w1, w2]
        lb, lb_url = balancer(tmp, name="balancer-scale")  # default probe interval: 5 s
        procs.append(lb)
        register(lb_url, "bench", [url1, url2])
        wrk(lb_url + PATH, BODY, connections=16, seconds=1, tmp=tmp)
        before = cpu_seconds([lb.pid])
        time.sleep(idle_seconds)
        idle_without = (cpu_seconds([lb.pid]) - before) / idle_seconds * 100
        without = wrk(lb_url + PATH, BODY, connections=16, seconds=load_seconds, tmp=tmp)

        with httpx.Client(base_url=lb_url, timeout=30) as client:
            for i in range(n):
                client.post(
                    "/api/server/register",
                    json={
                        "model_name": f"probed-{i % 50}",
                        "body": {"input": "{USER_PROMPT}"},
                        "req_url_template": f"{target_url}/api/generate?replica={i}",
                    },
                ).raise_for_status()
        time.sleep(6)  # every worker probed at least once
        served_before = _served(target_url)
        before = cpu_seconds([lb.pid])
        time.sleep(idle_seconds)
        cpu = cpu_seconds([lb.pid]) - before
        probes = _served(target_url) - served_before
        idle_with = cpu / idle_seconds * 100
        with_probed = wrk(lb_url + PATH, BODY, connections=16, seconds=load_seconds, tmp=tmp)
        return ProbeScale(
            n,
            idle_without,
            idle_with,
            probes / idle_seconds,
            (cpu - idle_without / 100 * idle_seconds) / max(1, probes) * 1e6,
            without,
            with_probed,
        )
    finally:
        for proc in reversed(procs):
            proc.stop()


def _served(url: str) -> int:
    return int(httpx.get(url + "/_stats").json()["served"].get("/", 0))


@dataclass
class Soak:
    seconds: float
    samples: list[tuple[float, int]]
    requests: int
    churned_workers: int
    bad_models: int
    slope_kib_per_min: float
    rss_start_mib: float
    rss_end_mib: float


def soak(tmp: Path, *, seconds: float = 300.0, warmup: float = 60.0, every: float = 5.0) -> Soak:
    procs: list[Process] = []
    try:
        w1, url1 = fake_worker(tmp, "soak-w1")
        w2, url2 = fake_worker(tmp, "soak-w2")
        procs += [w1, w2]
        lb, lb_url = balancer(tmp, name="balancer-soak")
        procs.append(lb)
        register(lb_url, "bench", [url1, url2])
        stop = threading.Event()
        counts = {"workers": 0, "bad": 0}

        def churn() -> None:
            # Workers registered and removed, and requests for models that do not exist:
            # neither may leave anything behind.
            with httpx.Client(base_url=lb_url, timeout=10) as client:
                i = 0
                while not stop.is_set():
                    url = f"{url1}/api/generate?churn={i}"
                    client.post(
                        "/api/server/register",
                        json={
                            "model_name": f"churn-{i}",
                            "body": {"input": "{USER_PROMPT}"},
                            "req_url_template": url,
                        },
                    )
                    client.post(
                        "/api/v1/chat/completions", json={"input": "x", "model_name": f"churn-{i}"}
                    )
                    client.post(
                        "/api/server/offline",
                        json={"model_name": f"churn-{i}", "req_url_template": url},
                    )
                    client.post(
                        "/v1/chat/completions",
                        json={
                            "model": f"no-such-model-{i}",
                            "messages": [{"role": "user", "content": "x"}],
                        },
                    )
                    counts["workers"] += 1
                    counts["bad"] += 1
                    i += 1
                    stop.wait(0.05)

        churner = threading.Thread(target=churn)
        churner.start()
        load: dict[str, WrkResult] = {}
        loader = threading.Thread(
            target=lambda: load.update(
                r=wrk(lb_url + PATH, BODY, connections=16, seconds=seconds, tmp=tmp)
            )
        )
        loader.start()
        samples = []
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            samples.append((elapsed, rss_bytes(lb.pid)))
            time.sleep(every)
        loader.join()
        stop.set()
        churner.join()
        steady = [(t, r) for t, r in samples if t >= warmup] or samples
        return Soak(
            seconds,
            samples,
            load["r"].requests,
            counts["workers"],
            counts["bad"],
            _slope(steady) * 60 / 1024,
            samples[0][1] / 2**20,
            samples[-1][1] / 2**20,
        )
    finally:
        for proc in reversed(procs):
            proc.stop()


def _slope(points: list[tuple[float, int]]) -> float:
    """Least-squares slope, bytes per second."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_r = sum(r for _, r in points) / n
    num = sum((t - mean_t) * (r - mean_r) for t, r in points)
    den = sum((t - mean_t) ** 2 for t, _ in points)
    return num / den if den else 0.0
