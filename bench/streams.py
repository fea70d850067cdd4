"""The stream cells: what a proxy costs per relayed chunk, and how many chunks one core relays.

CPU per chunk is the proxy's CPU per stream less its CPU per non-streamed request (measured in
the same run), divided by the chunks of a stream; over a window, where streams straddle its
edges, the same is taken as (CPU - streams started x CPU per request) / chunks received.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from balancer.fakes.processes import WorkerProcess
from bench import sse_client
from bench.harness import Proxy

PATH = "/v1/chat/completions"
RAMP = 0.5
"""Seconds a window-shaped load runs before it is measured."""


@dataclass(frozen=True)
class StreamCell:
    key: str
    label: str
    chunks: int
    chunk_delay: float
    connections: int
    stagger: float
    """Connections start at random offsets within this many seconds."""
    whole: bool
    """One whole stream per connection, measured from the first start to the last end, rather
    than a window of streams sent back to back."""
    deadline: float = 9.0
    """Whole streams: seconds before those not yet ended are cut short (a proxy that cannot
    keep up is measured over what it relayed by then)."""


SHORT = StreamCell("short", "16 streams of 16 chunks, 5 ms apart", 16, 0.005, 16, 0.1, False)
TOKENS = StreamCell(
    "tokens",
    "128 streams of 256 one-token chunks, 20 ms apart, starts spread over 1 s",
    256,
    0.02,
    128,
    1.0,
    True,
)
SATURATION = StreamCell(
    "saturation", "32 streams of 256 chunks back to back", 256, 0.0, 32, 0.1, False
)
CELLS = (SHORT, TOKENS, SATURATION)


@dataclass
class StreamRow:
    cell: str
    proxy: str
    streams_per_second: float | None
    chunks_per_second: float | None
    ttft_ms: float | None
    ttft_p99_ms: float | None
    gap_p99_ms: float | None
    cpu_us_per_stream: float | None
    cpu_us_per_chunk: float | None
    proxy_busy: float | None
    """The proxy's CPU time over the wall time: 1.0 is its core saturated."""
    load_busy: float | None
    """The same for the load side (client and workers), which has one core."""
    errors: int
    notes: str = ""
    """What went wrong, if anything: kinds of errors, streams the deadline cut short."""
    added_ttft_ms: float | None = None
    added_gap_p99_ms: float | None = None


def prepare(cell: StreamCell, workers: list[WorkerProcess]) -> None:
    for worker in workers:
        worker.control(latency=0.0, chunks=cell.chunks, chunk_delay=cell.chunk_delay)


def sample(
    proxy: Proxy,
    cell: StreamCell,
    *,
    seconds: float,
    load_pids: list[int],
    cpu_us_per_request: float | None = None,
) -> dict[str, Any]:
    """One run of a stream cell through one proxy."""
    urls = [url + PATH for url in (proxy.direct_urls or [proxy.url])]
    shape: dict[str, Any] = (
        {"per_connection": 1, "deadline": cell.deadline}
        if cell.whole
        else {"seconds": seconds, "ramp": RAMP}
    )
    run = sse_client.streams(
        urls,
        sse_client.stream_body(cell.chunks),
        proxy.headers,
        connections=cell.connections,
        stagger=cell.stagger,
        pids=proxy.pids,
        load_pids=load_pids,
        **shape,
    )
    summary = run.summary()
    cpu = run.proxy_cpu
    per_chunk = None
    if cpu is not None and cpu_us_per_request is not None and run.chunks > 0:
        per_chunk = (cpu - run.requests * cpu_us_per_request / 1e6) / run.chunks * 1e6
    return {
        "streams_per_second": run.streams / run.seconds,
        "chunks_per_second": run.chunks / run.seconds,
        "ttft_ms": summary["ttft_ms"],
        "ttft_p99_ms": summary["ttft_p99_ms"],
        "gap_p99_ms": summary["gap_p99_ms"],
        # Only where most streams ended: a proxy that cannot keep up has barely begun its own.
        "cpu_us_per_stream": (
            cpu / run.streams * 1e6
            if cpu is not None and run.streams and run.streams >= run.requests / 2
            else None
        ),
        "cpu_us_per_chunk": per_chunk,
        "proxy_busy": cpu / run.seconds if cpu is not None else None,
        "load_busy": run.load_cpu / run.seconds,
        "errors": run.errors,
        "error_kinds": run.error_kinds,
        "unfinished": run.unfinished,
    }


def rows(cell: StreamCell, samples: dict[str, list[dict[str, Any]]]) -> list[StreamRow]:
    """Medians of each proxy's rounds, and what each adds over a direct call."""
    out = []
    for name, runs in samples.items():
        out.append(
            StreamRow(
                cell.key,
                name,
                **{
                    key: median(runs, key)
                    for key in (
                        "streams_per_second",
                        "chunks_per_second",
                        "ttft_ms",
                        "ttft_p99_ms",
                        "gap_p99_ms",
                        "cpu_us_per_stream",
                        "cpu_us_per_chunk",
                        "proxy_busy",
                        "load_busy",
                    )
                },
                errors=sum(r["errors"] for r in runs),
                notes=_notes(runs),
            )
        )
    direct = next((r for r in out if r.proxy == "direct"), None)
    for row in out:
        if direct is not None:
            row.added_ttft_ms = minus(row.ttft_ms, direct.ttft_ms)
            row.added_gap_p99_ms = minus(row.gap_p99_ms, direct.gap_p99_ms)
    return out


def _notes(runs: list[dict[str, Any]]) -> str:
    kinds: dict[str, int] = {}
    for r in runs:
        for kind, count in r["error_kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    notes = [f"{count} x {kind}" for kind, count in kinds.items()]
    if unfinished := sum(r["unfinished"] for r in runs):
        notes.append(f"{unfinished} streams unfinished at the deadline")
    return "; ".join(notes)


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    """The median of one figure over a proxy's runs, those without it left out."""
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def minus(a: float | None, b: float | None) -> float | None:
    """What a figure adds over another (over a direct call's), if both were measured."""
    return None if a is None or b is None else a - b
