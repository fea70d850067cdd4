"""What every benchmark needs: processes pinned to cores, CPU time from /proc, wrk."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from balancer.fakes.processes import BalancerProcess, Process, WorkerProcess

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROXY_CORE = "0"
LOAD_CORE = "1" if (os.cpu_count() or 1) > 1 else "0"


@contextmanager
def on_load_core() -> Iterator[None]:
    """This process pinned to the load core within the block (where its clients run, they are
    load), to the cores it had before after it."""
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, affinity)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (and their threads) so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    found = [pid]
    for child in children(pid):
        found += tree(child)
    return found


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@dataclass
class Proxy:
    """One way to reach the workers: its base URL, the processes whose CPU time is its cost
    (none for a direct call), the headers its clients must send, and for a direct call the
    workers that stream loads spread their connections over."""

    name: str
    url: str
    pids: list[int]
    headers: dict[str, str] = field(default_factory=dict)
    direct_urls: list[str] = field(default_factory=list)
    slow: bool = False
    """So slow (LiteLLM) that one round of the long cells says enough, and saves minutes."""


def fake_worker(tmp: Path, name: str, **options: object) -> tuple[WorkerProcess, str]:
    worker = WorkerProcess(tmp, name, cores=LOAD_CORE, **options)
    worker.start()
    return worker, worker.url


def balancer(
    tmp: Path,
    *,
    env: dict[str, str] | None = None,
    name: str = "balancer",
    processes: int = 1,
    cores: str = PROXY_CORE,
    source: Path | None = None,
) -> tuple[Process, str]:
    proc = BalancerProcess(
        tmp,
        env=env,
        args=["--workers", str(processes)],
        cores=cores,
        name=name,
        source=source,
    )
    proc.start()
    return proc, proc.url


@dataclass(frozen=True)
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{body}'
"""


def wrk(
    url: str,
    body: str,
    *,
    connections: int,
    seconds: float,
    tmp: Path,
    headers: dict[str, str] | None = None,
) -> WrkResult:
    script = tmp / "post.lua"
    script.write_text(
        WRK_SCRIPT.format(body=body)
        + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in (headers or {}).items())
    )
    done = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CORE,
            "wrk",
            "-t",
            "1",
            "-c",
            str(connections),
            "-d",
            f"{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    out = done.stdout
    if "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed: {done.stdout}{done.stderr}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(x) for x in match.groups())
    return WrkResult(rps, _percentile(out, "50%"), _percentile(out, "99%"), requests, errors)


def _percentile(out: str, which: str) -> float:
    match = re.search(rf"^\s+{re.escape(which)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if match is None:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def register(url: str, model: str, worker_urls: list[str], **fields: object) -> None:
    for worker in worker_urls:
        reply = httpx.post(
            f"{url}/api/server/register",
            json={
                "model_name": model,
                "api": "openai",
                "req_url_template": f"{worker}/v1",
                "upstream_model": "fake-model",
                **fields,
            },
            timeout=10,
        )
        reply.raise_for_status()
