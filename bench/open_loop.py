"""Steady-rate (open-loop) arrivals of non-streamed requests, as wrk2 would send them.

wrk's closed loop sends a connection's next request only when the last one is answered, so a
slow answer delays the requests behind it and the tail hides (coordinated omission). Here request
i is due at `start + i / rate` whatever happened before; its latency is counted from when it was
due, so time spent waiting for a free connection or behind a stalled proxy counts. Connections
are kept alive and opened as needed, up to `max_connections`; requests still unanswered `drain`
seconds after the last was due count as unanswered (their latency is taken as infinite).

    python -m bench.open_loop URL --rate 1000 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import time
from dataclasses import dataclass, field

from bench.client import Connection, Target, own_cpu_seconds, percentile, run
from bench.harness import cpu_seconds

WARM_CONNECTIONS = 64


@dataclass
class OpenLoopRun:
    rate: float
    seconds: float
    sent: int
    answered: int
    errors: int
    unanswered: int
    proxy_cpu: float | None
    load_cpu: float
    latencies_ms: list[float] = field(default_factory=list)

    def p(self, q: float) -> float:
        """A percentile of the latencies, unanswered requests counted as infinitely slow."""
        return percentile(self.latencies_ms + [math.inf] * self.unanswered, q)


async def _open_loop(
    target: Target,
    rate: float,
    seconds: float,
    max_connections: int,
    drain: float,
    pids: list[int],
    load_pids: list[int],
) -> OpenLoopRun:
    loop = asyncio.get_running_loop()
    idle: list[Connection] = list(
        await asyncio.gather(*(Connection.open(target) for _ in range(WARM_CONNECTIONS)))
    )
    opened = len(idle)
    waiting: collections.deque[asyncio.Future[None]] = collections.deque()
    latencies: list[float] = []
    errors = 0

    def wake_one() -> None:
        while waiting:
            waiter = waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def acquire() -> Connection:
        nonlocal opened
        while True:
            if idle:
                conn = idle.pop()
                if conn.reusable:
                    return conn
                conn.close()
                opened -= 1
                continue
            if opened < max_connections:
                opened += 1
                try:
                    return await Connection.open(target)
                except OSError:
                    opened -= 1
                    raise
            waiter = loop.create_future()
            waiting.append(waiter)
            await waiter

    async def one(due: float) -> None:
        nonlocal errors, opened
        try:
            conn = await acquire()
        except OSError:
            errors += 1
            return
        try:
            status = await conn.send(target.request)
        except asyncio.CancelledError:
            # Unanswered when the drain ended: the connection cannot be reused.
            conn.close()
            opened -= 1
            wake_one()
            raise
        except OSError:
            conn.close()
            opened -= 1
            wake_one()
            errors += 1
            return
        if status == 200:
            latencies.append((time.perf_counter() - due) * 1000)
        else:
            errors += 1
        idle.append(conn)
        wake_one()

    tasks: set[asyncio.Task[None]] = set()
    cpu_before = cpu_seconds(pids) if pids else 0.0
    load_before = own_cpu_seconds() + cpu_seconds(load_pids)
    start = time.perf_counter() + 0.01
    total = round(rate * seconds)
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    unanswered = 0
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=drain)
        unanswered = len(pending)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    elapsed = time.perf_counter() - start
    proxy_cpu = cpu_seconds(pids) - cpu_before if pids else None
    load_cpu = own_cpu_seconds() + cpu_seconds(load_pids) - load_before
    for conn in idle:
        conn.close()
    return OpenLoopRun(
        rate=rate,
        seconds=elapsed,
        sent=total,
        answered=len(latencies),
        errors=errors,
        unanswered=unanswered,
        proxy_cpu=proxy_cpu,
        load_cpu=load_cpu,
        latencies_ms=latencies,
    )


def open_loop(
    url: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    rate: float,
    seconds: float,
    max_connections: int = 512,
    drain: float = 2.0,
    pids: list[int] | None = None,
    load_pids: list[int] | None = None,
) -> OpenLoopRun:
    """Send `rate` requests a second for `seconds` and time each from when it was due."""
    return run(
        _open_loop(
            Target.post(url, body, headers),
            rate,
            seconds,
            max_connections,
            drain,
            pids or [],
            load_pids or [],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.open_loop")
    parser.add_argument("url", help="chat completions URL")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests a second")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    body = json.dumps(
        {"model": "bench", "messages": [{"role": "user", "content": "hello, how are you?"}]}
    ).encode()
    result = open_loop(args.url, body, rate=args.rate, seconds=args.seconds)
    print(
        json.dumps(
            {
                "sent": result.sent,
                "answered": result.answered,
                "errors": result.errors,
                "unanswered": result.unanswered,
                "p50_ms": result.p(50),
                "p99_ms": result.p(99),
                "p99.9_ms": result.p(99.9),
            }
        )
    )


if __name__ == "__main__":
    main()
