"""Selection quality: the real policies in a discrete-event simulation, on a fake clock.

Five workers, each serving `SLOTS` requests at a time (more wait in its queue): two normal ones,
one 10x slower, one that degrades to 5x in the middle third of the run and recovers, and one that
fails 20% of its calls fast. Poisson arrivals at 70% of the total capacity. A failed attempt is
retried on another worker (never the same one twice, up to two retries), as the balancer does.
Reported per policy: mean and p99 latency as the client sees it, and the client-visible error
rate; plus an oracle that knows every worker's true latency and queue.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from balancer.errors import UpstreamError
from balancer.events import AttemptFailed, AttemptSucceeded
from balancer.registry import Worker, parse_spec
from balancer.selection import Selector
from balancer.types import STRATEGIES

SLOTS = 4
BASE = 0.1  # seconds: a normal worker's mean latency
FAIL_FAST = 0.005
MAX_RETRIES = 2


@dataclass
class SimWorker:
    name: str
    mean: Callable[[float], float]
    """The worker's true mean latency at a given time."""
    fail_rate: float = 0.0
    weight: float = 1.0
    busy: int = 0
    queue: list[tuple[float, int]] = field(default_factory=list)
    worker: Worker = field(init=False)

    def __post_init__(self) -> None:
        self.worker = Worker(
            parse_spec(
                {
                    "model_name": "sim",
                    "api": "openai",
                    "weight": self.weight,
                    "req_url_template": f"http://{self.name}.sim/v1",
                }
            )
        )


def workers(duration: float) -> list[SimWorker]:
    def degrading(t: float) -> float:
        return BASE * 5 if duration / 3 <= t < 2 * duration / 3 else BASE

    return [
        SimWorker("normal-a", lambda t: BASE, weight=1.0),
        SimWorker("normal-b", lambda t: BASE, weight=1.0),
        SimWorker("slow-10x", lambda t: BASE * 10, weight=0.1),
        SimWorker("degrades-5x", degrading, weight=1.0),
        SimWorker("fails-20pct", lambda t: BASE, fail_rate=0.2, weight=0.8),
    ]


def capacity(pool: list[SimWorker]) -> float:
    """Requests per second the pool serves at nominal speed."""
    return sum(SLOTS / w.mean(0.0) * (1 - w.fail_rate) for w in pool)


@dataclass
class Result:
    policy: str
    requests: int
    mean_ms: float
    p99_ms: float
    error_rate: float
    shares: dict[str, float]


def simulate(policy: str, *, duration: float = 300.0, load: float = 0.7, seed: int = 1) -> Result:
    rng = random.Random(seed)
    pool = workers(duration)
    by_id = {w.worker.id: w for w in pool}
    now = 0.0
    selector = Selector(
        policy if policy != "oracle" else "round_robin",
        clock=lambda: now,
        rng=random.Random(seed + 1),
    )
    rate = capacity(pool) * load
    events: list[tuple[float, int, str, object]] = []
    seq = itertools.count()
    latencies: list[float] = []
    errors = 0
    served: dict[str, int] = {w.name: 0 for w in pool}

    @dataclass
    class Request:
        arrived: float
        tried: list[str] = field(default_factory=list)

    def push(at: float, kind: str, data: object) -> None:
        heapq.heappush(events, (at, next(seq), kind, data))

    def oracle(candidates: list[SimWorker]) -> SimWorker:
        def expected(w: SimWorker) -> float:
            wait = max(0, w.busy + len(w.queue) - SLOTS + 1) / SLOTS
            return (1 + wait) * w.mean(now) * (1 + 10 * w.fail_rate)

        return min(candidates, key=expected)

    def dispatch(request: Request) -> None:
        nonlocal errors
        if len(request.tried) > MAX_RETRIES:
            errors += 1
            return
        if policy == "oracle":
            candidates = [w for w in pool if w.worker.id not in request.tried]
            chosen = oracle(candidates) if candidates else None
        else:
            choice = selector.choose("sim", [w.worker for w in pool], exclude=request.tried)
            chosen = by_id[choice.worker.id] if choice.worker else None
        if chosen is None:
            errors += 1
            return
        request.tried.append(chosen.worker.id)
        chosen.worker.inflight += 1
        start_or_queue(chosen, request, now)

    def start_or_queue(w: SimWorker, request: Request, sent: float) -> None:
        if w.busy < SLOTS:
            w.busy += 1
            fails = rng.random() < w.fail_rate
            service = FAIL_FAST if fails else rng.gammavariate(4.0, w.mean(now) / 4.0)
            push(now + service, "done", (w, request, sent, fails))
        else:
            w.queue.append((sent, id(request)))
            pending[id(request)] = request

    pending: dict[int, Request] = {}
    push(rng.expovariate(rate), "arrive", None)
    while events:
        now, _, kind, data = heapq.heappop(events)
        if kind == "arrive":
            if now < duration:
                dispatch(Request(now))
                push(now + rng.expovariate(rate), "arrive", None)
            continue
        w, request, sent, fails = data  # type: ignore[misc]
        w.busy -= 1
        w.worker.inflight -= 1
        if w.queue:
            queued_sent, key = w.queue.pop(0)
            start_or_queue(w, pending.pop(key), queued_sent)
        elapsed = now - sent
        if fails:
            selector.on_attempt_failed(
                AttemptFailed(w.worker, UpstreamError("sim", reason="http_500"), elapsed)
            )
            dispatch(request)
        else:
            selector.on_attempt_succeeded(AttemptSucceeded(w.worker, elapsed))
            latencies.append(now - request.arrived)
            served[w.name] += 1
    return summarise(policy, latencies, errors, served)


def summarise(policy: str, latencies: list[float], errors: int, served: dict[str, int]) -> Result:
    latencies = sorted(latencies)
    total = len(latencies) + errors
    return Result(
        policy,
        total,
        statistics.fmean(latencies) * 1000,
        latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)] * 1000,
        errors / total if total else 0.0,
        {name: count / max(1, len(latencies)) for name, count in served.items()},
    )


POLICIES = (*STRATEGIES, "oracle")
"""Every strategy, and an oracle that knows each worker's true latency and queue."""


def run(duration: float = 300.0) -> list[Result]:
    return [simulate(policy, duration=duration) for policy in POLICIES]


if __name__ == "__main__":
    for result in run():
        print(result)


def live(tmp: Path, *, seconds: float = 9.0, rate: float = 60.0) -> list[Result]:
    """The same five kinds of worker, as fake worker processes at a smaller scale, under an
    open-loop Poisson load through a real balancer: confirms the simulation's ranking."""
    from balancer.fakes.processes import Process
    from bench.harness import balancer, fake_worker, register

    base = 0.02
    specs = {
        "normal-a": {"latency": base},
        "normal-b": {"latency": base},
        "slow-10x": {"latency": base * 10},
        "degrades-5x": {"latency": base},
        "fails-20pct": {"latency": base, "fail_rate": 0.2},
    }
    procs: list[Process] = []
    urls = {}
    results = []
    try:
        for name, options in specs.items():
            worker, url = fake_worker(tmp, name, **options)
            procs.append(worker)
            urls[name] = url
        httpx.post(urls["fails-20pct"] + "/_control", json={"fail_fast": True}).raise_for_status()
        lb, lb_url = balancer(tmp, name="balancer-live")
        procs.append(lb)
        weights = {
            "normal-a": 1,
            "normal-b": 1,
            "slow-10x": 0.1,
            "degrades-5x": 1,
            "fails-20pct": 0.8,
        }
        for policy in STRATEGIES:
            model = f"live-{policy}"
            for name, url in urls.items():
                register(lb_url, model, [url], strategy=policy, weight=weights[name])
            results.append(asyncio.run(_live_load(lb_url, model, policy, urls, seconds, rate)))
    finally:
        for proc in reversed(procs):
            proc.stop()
    return results


async def _live_load(
    url: str, model: str, policy: str, workers: dict[str, str], seconds: float, rate: float
) -> Result:
    import aiohttp

    rng = random.Random(3)
    latencies: list[float] = []
    errors = 0
    served: dict[str, int] = {}
    body = {"input": "live", "model_name": model}

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        started = time.perf_counter()
        async with session.post(f"{url}/api/v1/chat/completions", json=body) as resp:
            data = await resp.json()
        if resp.status != 200:
            errors += 1
            return
        latencies.append(time.perf_counter() - started)
        name = data["result"].split("]")[0].strip("[")
        served[name] = served.get(name, 0) + 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = []
        start = time.perf_counter()
        degraded = recovered = False
        while (elapsed := time.perf_counter() - start) < seconds:
            if not degraded and elapsed > seconds / 3:
                await session.post(workers["degrades-5x"] + "/_control", json={"latency": 0.1})
                degraded = True
            if not recovered and elapsed > 2 * seconds / 3:
                await session.post(workers["degrades-5x"] + "/_control", json={"latency": 0.02})
                recovered = True
            tasks.append(asyncio.create_task(one(session)))
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
    return summarise(policy, latencies, errors, served)
