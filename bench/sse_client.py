"""Streamed chat completions as load: many connections, each sending streams back to back.

Two shapes of run:
- a window (`seconds`): every connection streams back to back from a start staggered within
  `stagger` seconds; after `ramp` seconds, a window of `seconds` is measured;
- whole streams (`per_connection`): every connection starts at a random offset within `stagger`
  seconds and sends that many streams; measured from the first start to the last end (or to
  `deadline`, when a proxy cannot keep up).

Within what is measured: streams started and ended, chunks received (SSE events, less the two
that end each stream: the finish chunk and `[DONE]`), the time to the answer's headers and to its
first chunk, the gaps between reads within a stream, and the CPU time of the proxy's processes
and of the load side (this process, its ended children, the workers) from /proc.

    python -m bench.sse_client URL --connections 16 --seconds 5 --chunks 16
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, field

from bench.client import Connection, Target, own_cpu_seconds, percentile, run
from bench.harness import cpu_seconds

ENDING_EVENTS = 2  # the chunk with finish_reason, and [DONE]


def stream_body(chunks: int, worker_name_length: int = 2) -> bytes:
    """A streamed chat request whose answer the fake worker splits into `chunks` chunks of four
    characters, about a token each: it answers `[<name>] <prompt>`, so with a two-letter name
    the chunks are `[w1]`, ` 000`, ` 001`... (all different: LiteLLM ends a stream that repeats
    one chunk a hundred times)."""
    prompt = "".join(f"{i % 4096:03x} " for i in range(chunks))
    prompt = prompt[: chunks * 4 - len(f"[{'x' * worker_name_length}] ")]
    return json.dumps(
        {"model": "bench", "stream": True, "messages": [{"role": "user", "content": prompt}]}
    ).encode()


@dataclass
class StreamRun:
    seconds: float
    requests: int
    """Streams started within what was measured."""
    streams: int
    """Streams that ended within it."""
    chunks: int
    errors: int
    proxy_cpu: float | None
    load_cpu: float
    ttfb_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    gaps_ms: list[float] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)
    unfinished: int = 0
    """Whole streams cut short by the deadline."""

    def summary(self) -> dict[str, float | int | None]:
        """Medians and tails: what a report shows."""
        return {
            "seconds": self.seconds,
            "requests": self.requests,
            "streams": self.streams,
            "chunks": self.chunks,
            "errors": self.errors,
            "proxy_cpu": self.proxy_cpu,
            "load_cpu": self.load_cpu,
            "ttfb_ms": statistics.median(self.ttfb_ms) if self.ttfb_ms else None,
            "ttft_ms": statistics.median(self.ttft_ms) if self.ttft_ms else None,
            "ttft_p99_ms": percentile(self.ttft_ms, 99) if self.ttft_ms else None,
            "gap_p99_ms": percentile(self.gaps_ms, 99) if self.gaps_ms else None,
        }


class _Tally:
    """What all connections have seen so far; `measuring` says whether samples are kept."""

    def __init__(self) -> None:
        self.requests = 0
        self.streams = 0
        self.events = 0
        self.errors = 0
        self.error_kinds: collections.Counter[str] = collections.Counter()
        self.measuring = False
        self.ttfb: list[float] = []
        self.ttft: list[float] = []
        self.gaps: list[float] = []


class _Stream:
    """One streamed answer: counts its events as they arrive, and sees its `[DONE]` (either may
    be split between two reads: the last five bytes are kept for the next one)."""

    __slots__ = ("done", "first", "last", "started", "tail", "tally")

    def __init__(self, tally: _Tally) -> None:
        self.tally = tally
        self.started = time.perf_counter()
        self.first = 0.0
        self.last = 0.0
        self.tail = b""
        self.done = False

    def on_headers(self) -> None:
        if self.tally.measuring:
            self.tally.ttfb.append((time.perf_counter() - self.started) * 1000)

    def on_body(self, piece: bytes) -> None:
        now = time.perf_counter()
        data = self.tail + piece
        # An event wholly within the kept bytes was counted with the last read.
        self.tally.events += data.count(b"data:") - self.tail.count(b"data:")
        self.done = self.done or b"[DONE]" in data
        self.tail = data[-5:]
        if self.tally.measuring:
            if not self.first:
                self.tally.ttft.append((now - self.started) * 1000)
            else:
                self.tally.gaps.append((now - self.last) * 1000)
        if not self.first:
            self.first = now
        self.last = now


async def _connection(
    target: Target, tally: _Tally, stop: asyncio.Event, delay: float, count: int | None
) -> None:
    await asyncio.sleep(delay)
    conn: Connection | None = None
    sent = 0
    try:
        while not stop.is_set() and (count is None or sent < count):
            sent += 1
            try:
                if conn is None or not conn.reusable:
                    if conn is not None:
                        conn.close()
                    conn = await Connection.open(target)
                tally.requests += 1
                stream = _Stream(tally)
                status = await conn.send(target.request, stream.on_headers, stream.on_body)
            except OSError as exc:
                if stop.is_set():
                    return  # closed at the end of the window: not an error
                tally.errors += 1
                tally.error_kinds[type(exc).__name__] += 1
                conn = None
                await asyncio.sleep(0.01)
                continue
            if status == 200 and stream.done:
                tally.streams += 1
            else:
                tally.errors += 1
                tally.error_kinds[f"status {status}" if status != 200 else "no [DONE]"] += 1
    finally:
        if conn is not None:
            conn.close()


def _snapshot(tally: _Tally, pids: list[int], load_pids: list[int]) -> dict[str, float]:
    return {
        "time": time.perf_counter(),
        "requests": tally.requests,
        "streams": tally.streams,
        "events": tally.events,
        "errors": tally.errors,
        "proxy_cpu": cpu_seconds(pids) if pids else 0.0,
        "load_cpu": own_cpu_seconds() + cpu_seconds(load_pids),
    }


async def _streams(
    urls: list[str],
    body: bytes,
    headers: dict[str, str],
    *,
    connections: int,
    seconds: float | None,
    ramp: float,
    stagger: float,
    per_connection: int | None,
    deadline: float,
    pids: list[int],
    load_pids: list[int],
    seed: int,
) -> StreamRun:
    targets = [Target.post(url, body, headers) for url in urls]
    rng = random.Random(seed)
    tally = _Tally()
    stop = asyncio.Event()
    whole = per_connection is not None
    tally.measuring = whole
    before = _snapshot(tally, pids, load_pids)
    tasks = [
        asyncio.create_task(
            _connection(
                targets[i % len(targets)], tally, stop, rng.uniform(0, stagger), per_connection
            )
        )
        for i in range(connections)
    ]
    unfinished = 0
    if whole:
        _, pending = await asyncio.wait(tasks, timeout=deadline)
        unfinished = len(pending)
    else:
        await asyncio.sleep(ramp)
        before = _snapshot(tally, pids, load_pids)
        tally.measuring = True
        await asyncio.sleep(seconds or 0.0)
    after = _snapshot(tally, pids, load_pids)
    tally.measuring = False
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    streams = int(after["streams"] - before["streams"])
    return StreamRun(
        seconds=after["time"] - before["time"],
        requests=int(after["requests"] - before["requests"]),
        streams=streams,
        chunks=int(after["events"] - before["events"]) - ENDING_EVENTS * streams,
        errors=int(after["errors"] - before["errors"]),
        proxy_cpu=after["proxy_cpu"] - before["proxy_cpu"] if pids else None,
        load_cpu=after["load_cpu"] - before["load_cpu"],
        ttfb_ms=tally.ttfb,
        ttft_ms=tally.ttft,
        gaps_ms=tally.gaps,
        error_kinds=dict(tally.error_kinds),
        unfinished=unfinished,
    )


def streams(
    urls: list[str],
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    connections: int,
    seconds: float | None = None,
    ramp: float = 0.5,
    stagger: float = 0.0,
    per_connection: int | None = None,
    deadline: float = 30.0,
    pids: list[int] | None = None,
    load_pids: list[int] | None = None,
    seed: int = 1,
) -> StreamRun:
    """Run one load of streams (connections spread over `urls`) and measure it."""
    if (seconds is None) == (per_connection is None):
        raise ValueError("give either seconds (a window) or per_connection (whole streams)")
    return run(
        _streams(
            urls,
            body,
            headers or {},
            connections=connections,
            seconds=seconds,
            ramp=ramp,
            stagger=stagger,
            per_connection=per_connection,
            deadline=deadline,
            pids=pids or [],
            load_pids=load_pids or [],
            seed=seed,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sse_client")
    parser.add_argument("url", nargs="+", help="chat completions URL(s)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--chunks", type=int, default=16, help="as the workers are set to send")
    parser.add_argument("--stagger", type=float, default=0.0)
    parser.add_argument("--pid", type=int, action="append", default=[], help="a proxy's pid")
    args = parser.parse_args()
    result = streams(
        args.url,
        stream_body(args.chunks),
        connections=args.connections,
        seconds=args.seconds,
        stagger=args.stagger,
        pids=args.pid,
    )
    print(json.dumps({k: v for k, v in asdict(result).items() if not k.endswith("_ms")}))
    print(json.dumps(result.summary()))


if __name__ == "__main__":
    main()
