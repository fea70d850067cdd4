"""The balancer's own cost, side by side with its peers and with calling a worker directly.

Every proxy runs alone on core 0; the load (wrk, or this process's own clients on uvloop, which
is why it pins itself to core 1) and the two fake workers share core 1. Within each cell the
proxies take turns round after round, the order rotating, so noise on the machine hits them
alike; medians of the rounds are reported. Cells:
- non-streamed chat completions through wrk's closed loop, 0 and 50 ms upstream x 16 and 64
  connections: req/s, p50, p99, and the proxy's CPU time per request from /proc;
- the 50 ms tail again with steady-rate (open-loop) arrivals (`bench/open_loop.py`);
- the stream cells of `bench/streams.py`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from balancer.fakes.processes import Process, WorkerProcess
from bench import peers, streams
from bench.client import own_cpu_seconds
from bench.harness import (
    Proxy,
    WrkResult,
    balancer,
    cpu_seconds,
    fake_worker,
    on_load_core,
    register,
    tree,
    wrk,
)
from bench.open_loop import open_loop
from bench.streams import PATH, median, minus

BODY = '{"model":"bench","messages":[{"role":"user","content":"hello, how are you?"}]}'
REQUEST_CELLS = ((0.0, 16), (0.0, 64), (0.05, 16), (0.05, 64))
TAIL_CELL = (0.05, 64)
BASELINE_CELL = "0 ms upstream, 16 conns"
"""Where each proxy's CPU per non-streamed request is taken from, for its CPU per chunk."""
TWO_PROCESSES = "balancer --workers 2"
CELL_NAMES = ("requests", "open-loop", *(c.key for c in streams.CELLS))
T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    rounds: int = 3
    """Rounds of the cells issue 13's goals are measured in (0 ms and 16 connections, the 50 ms
    tail closed and open loop, the two stream cells with pauses between chunks)."""
    side_rounds: int = 2
    """Rounds of the others (0 ms and 64 connections, 50 ms and 16, chunks back to back)."""
    request_seconds: float = 2.0
    tail_seconds: float = 3.0
    """The 50 ms, 64 connections cell, closed and open loop: its p99 needs more samples."""
    stream_seconds: float = 2.0
    saturation_seconds: float = 3.0
    open_loop_rate: float = 1000.0
    """About 50 requests in flight at 50 ms, where wrk's 64 connections keep 64."""
    cells: tuple[str, ...] = CELL_NAMES
    proxies: tuple[str, ...] | None = None
    """Only these (by name; `direct` and `balancer` always run); all when None."""

    def wants(self, name: str) -> bool:
        return self.proxies is None or name in self.proxies or name in ("direct", "balancer")


QUICK = Plan(
    rounds=1,
    side_rounds=1,
    request_seconds=1,
    tail_seconds=2,
    stream_seconds=1,
    saturation_seconds=1.5,
)


@dataclass
class RequestRow:
    cell: str
    proxy: str
    rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    cpu_us: float | None
    load_busy: float | None
    errors: int
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None


@dataclass
class OpenLoopRow:
    proxy: str
    rate: float
    answered_per_second: float | None
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    cpu_us: float | None
    load_busy: float | None
    errors: int
    unanswered: int
    added_p99_ms: float | None = None


@dataclass
class Results:
    plan: Plan
    proxies: list[str]
    versions: dict[str, str]
    unavailable: dict[str, str]
    """Peer → why it is not measured."""
    failures: list[str] = field(default_factory=list)
    """Runs that failed: cell, proxy and why."""
    requests: list[RequestRow] = field(default_factory=list)
    open_loop: list[OpenLoopRow] = field(default_factory=list)
    streams: dict[str, list[streams.StreamRow]] = field(default_factory=dict)


def run(tmp: Path, plan: Plan | None = None) -> Results:
    plan = plan or Plan()
    procs: list[Process] = []
    # The clients of the open-loop and stream cells run in this process: they are load.
    with on_load_core():
        try:
            w1, url1 = fake_worker(tmp, "w1")
            w2, url2 = fake_worker(tmp, "w2")
            workers = [w1, w2]
            procs += workers
            worker_urls = [url1, url2]
            load_pids = [w1.pid, w2.pid]
            started = peers.start(tmp, worker_urls, [n for n in peers.PEERS if plan.wants(n)])
            procs += started.processes
            lb, lb_url = balancer(tmp)
            procs.append(lb)
            register(lb_url, "bench", worker_urls, strategy="least_latency")
            proxies = [
                Proxy("direct", url1, [], direct_urls=worker_urls),
                *started.proxies,
                Proxy("balancer", lb_url, [lb.pid]),
            ]
            if plan.wants(TWO_PROCESSES):
                # Two processes need two cores: this one shares core 1 with load and workers.
                lb2, lb2_url = balancer(tmp, name="balancer-x2", processes=2, cores="0,1")
                procs.append(lb2)
                time.sleep(1.5)  # both processes have loaded the registry
                register(lb2_url, "bench", worker_urls, strategy="least_latency")
                time.sleep(1.5)  # ... and seen the registration
                proxies.append(Proxy(TWO_PROCESSES, lb2_url, tree(lb2.pid)))
            results = Results(
                plan, [p.name for p in proxies], started.versions, started.unavailable
            )
            _warm_up(proxies, tmp, workers, load_pids, results.failures)
            _request_cells(proxies, plan, tmp, workers, load_pids, results)
            baseline = {r.proxy: r.cpu_us for r in results.requests if r.cell == BASELINE_CELL}
            one_core = [p for p in proxies if p.name != TWO_PROCESSES]
            slow = {p.name for p in proxies if p.slow}
            for cell in streams.CELLS:
                if cell.key not in plan.cells:
                    continue
                streams.prepare(cell, workers)
                seconds = (
                    plan.saturation_seconds if cell is streams.SATURATION else plan.stream_seconds
                )
                samples = _interleave(
                    one_core,
                    plan.side_rounds if cell is streams.SATURATION else plan.rounds,
                    cell.label,
                    results.failures,
                    lambda p, c=cell, s=seconds: streams.sample(  # type: ignore[misc]
                        p,
                        c,
                        seconds=s,
                        load_pids=load_pids,
                        cpu_us_per_request=baseline.get(p.name),
                    ),
                    # A direct call is only a baseline, and a slow proxy's figures are far apart
                    # from the others': once is enough.
                    once={"direct", *slow},
                )
                results.streams[cell.key] = streams.rows(cell, samples)
            return results
        finally:
            for proc in reversed(procs):
                proc.stop()


def _warm_up(
    proxies: list[Proxy],
    tmp: Path,
    workers: list[WorkerProcess],
    load_pids: list[int],
    failures: list[str],
) -> None:
    """Fill every proxy's connection pools, and run its streaming path once."""
    streams.prepare(streams.SHORT, workers)
    for proxy in proxies:
        try:
            wrk(proxy.url + PATH, BODY, connections=64, seconds=1, tmp=tmp, headers=proxy.headers)
            streams.sample(proxy, streams.SHORT, seconds=0.5, load_pids=load_pids)
        except Exception as exc:
            failures.append(f"warm-up, {proxy.name}: {type(exc).__name__}: {exc}"[:300])


def _request_cells(
    proxies: list[Proxy],
    plan: Plan,
    tmp: Path,
    workers: list[WorkerProcess],
    load_pids: list[int],
    results: Results,
) -> None:
    cells: tuple[tuple[float, int], ...] = REQUEST_CELLS if "requests" in plan.cells else ()
    if not cells and set(plan.cells) - {"requests", "open-loop"}:
        cells = ((0.0, 16),)  # the stream cells' CPU per chunk needs the CPU per request
    if "open-loop" in plan.cells and TAIL_CELL not in cells:
        cells = (*cells, TAIL_CELL)
    for latency, connections in cells:
        for worker in workers:
            worker.control(latency=latency, chunks=8, chunk_delay=0.0)
        label = f"{int(latency * 1000)} ms upstream, {connections} conns"
        tail = (latency, connections) == TAIL_CELL
        seconds = plan.tail_seconds if tail else plan.request_seconds
        goal = tail or label == BASELINE_CELL
        samples = _interleave(
            proxies,
            plan.rounds if goal else plan.side_rounds,
            label,
            results.failures,
            lambda p, c=connections, s=seconds: _wrk_sample(p, c, s, tmp, load_pids),  # type: ignore[misc]
        )
        rows = [
            RequestRow(
                label,
                name,
                **{k: median(runs, k) for k in ("rps", "p50_ms", "p99_ms", "cpu_us", "load_busy")},
                errors=sum(r["errors"] for r in runs),
            )
            for name, runs in samples.items()
        ]
        direct = rows[0]
        for row in rows:
            row.added_p50_ms = minus(row.p50_ms, direct.p50_ms)
            row.added_p99_ms = minus(row.p99_ms, direct.p99_ms)
        results.requests += rows
        if tail and "open-loop" in plan.cells:
            results.open_loop = _open_loop_cell(proxies, plan, load_pids, results.failures)


def _open_loop_cell(
    proxies: list[Proxy], plan: Plan, load_pids: list[int], failures: list[str]
) -> list[OpenLoopRow]:
    label = f"50 ms upstream, open loop at {plan.open_loop_rate:,.0f} req/s"

    def one(proxy: Proxy) -> dict[str, Any]:
        done = open_loop(
            proxy.url + PATH,
            BODY.encode(),
            proxy.headers,
            rate=plan.open_loop_rate,
            seconds=plan.tail_seconds,
            pids=proxy.pids,
            load_pids=load_pids,
        )
        cpu = done.proxy_cpu
        return {
            "answered_per_second": done.answered / done.seconds,
            "p50_ms": done.p(50),
            "p99_ms": done.p(99),
            "p999_ms": done.p(99.9),
            "cpu_us": cpu / done.answered * 1e6 if cpu is not None and done.answered else None,
            "load_busy": done.load_cpu / done.seconds,
            "errors": done.errors,
            "unanswered": done.unanswered,
        }

    slow = {p.name for p in proxies if p.slow}
    samples = _interleave(proxies, plan.rounds, label, failures, one, once=slow)
    keys = ("answered_per_second", "p50_ms", "p99_ms", "p999_ms", "cpu_us", "load_busy")
    rows = [
        OpenLoopRow(
            name,
            plan.open_loop_rate,
            **{k: median(runs, k) for k in keys},
            errors=sum(r["errors"] for r in runs),
            unanswered=sum(r["unanswered"] for r in runs),
        )
        for name, runs in samples.items()
    ]
    for row in rows:
        row.added_p99_ms = minus(row.p99_ms, rows[0].p99_ms)
    return rows


def measure(
    proxy: Proxy, *, connections: int, seconds: float, tmp: Path
) -> tuple[WrkResult, float | None]:
    """One wrk run through a proxy, and the proxy's CPU time per request over it (us)."""
    before = cpu_seconds(proxy.pids) if proxy.pids else 0.0
    result = wrk(
        proxy.url + PATH,
        BODY,
        connections=connections,
        seconds=seconds,
        tmp=tmp,
        headers=proxy.headers,
    )
    cpu = (cpu_seconds(proxy.pids) - before) if proxy.pids else None
    per_request = None if cpu is None or not result.requests else cpu / result.requests * 1e6
    return result, per_request


def _wrk_sample(
    proxy: Proxy, connections: int, seconds: float, tmp: Path, load_pids: list[int]
) -> dict[str, Any]:
    load_before = own_cpu_seconds() + cpu_seconds(load_pids)
    started = time.perf_counter()
    result, per_request = measure(proxy, connections=connections, seconds=seconds, tmp=tmp)
    wall = time.perf_counter() - started
    return {
        "rps": result.requests_per_second,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "cpu_us": per_request,
        "load_busy": (own_cpu_seconds() + cpu_seconds(load_pids) - load_before) / wall,
        "errors": result.errors,
    }


def _interleave(
    proxies: list[Proxy],
    rounds: int,
    label: str,
    failures: list[str],
    run_one: Callable[[Proxy], T],
    *,
    once: frozenset[str] | set[str] = frozenset(),
) -> dict[str, list[T]]:
    """Each proxy in turn, round after round, the order rotating; a run that fails is
    reported, and the others go on."""
    samples: dict[str, list[T]] = {p.name: [] for p in proxies}
    started = time.monotonic()
    for round_ in range(rounds):
        shift = round_ % len(proxies)
        for proxy in proxies[shift:] + proxies[:shift]:
            if round_ and proxy.name in once:
                continue
            try:
                samples[proxy.name].append(run_one(proxy))
            except Exception as exc:
                failures.append(f"{label}, {proxy.name}: {type(exc).__name__}: {exc}"[:300])
            _settle(proxy)
    print(f"  {label}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return samples


def _settle(proxy: Proxy, *, limit: float = 5.0) -> None:
    """Wait until the proxy is idle again (a slow one may still be working through what the
    last run left it), so that its work does not land on the next proxy's run."""
    if not proxy.pids:
        return
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = cpu_seconds(proxy.pids)
        time.sleep(0.05)
        if cpu_seconds(proxy.pids) - before < 0.005:
            return


def main() -> None:
    """Some cells through some proxies, printed as markdown: `python -m bench.overhead --quick
    --cells tokens saturation --proxies nginx vllm-router`."""
    import argparse
    import dataclasses
    import tempfile

    from bench import report

    parser = argparse.ArgumentParser(prog="python -m bench.overhead")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--cells", nargs="+", choices=CELL_NAMES, default=list(CELL_NAMES))
    parser.add_argument("--proxies", nargs="+", help="peers, or 'balancer --workers 2'")
    args = parser.parse_args()
    plan = dataclasses.replace(
        QUICK if args.quick else Plan(),
        cells=tuple(args.cells),
        proxies=tuple(args.proxies) if args.proxies else None,
    )
    if args.rounds:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llm-balancer-bench-") as name:
        results = run(Path(name), plan)
    print(report.headline(results) + report.sections(results))
    print(f"{time.monotonic() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
