"""The proxy sections of bench/results/latest.md: the headline against the peers, the peers, and
a table per cell."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from bench import peers, streams
from bench.overhead import BASELINE_CELL, TWO_PROCESSES, Results

THE_BALANCER = "balancer"
RATIOS_AGAINST = ("nginx", "vllm-router", "LiteLLM")
GOALS = {"chunk": 3.0, "request": 8.0, "p99_ms": 3.0}
"""Issue 13's goals: CPU per chunk and per request within these multiples of nginx's, and an
added p99 under this many ms at 50 ms upstream and 64 connections."""


def fmt(value: float | None, digits: int = 0, *, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "∞"
    return f"{value:+,.{digits}f}" if sign else f"{value:,.{digits}f}"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


class _Figures:
    """The headline's figures, by proxy name."""

    def __init__(self, results: Results) -> None:
        self.results = results
        rows = results.requests
        self.per_request = {r.proxy: r.cpu_us for r in rows if r.cell == BASELINE_CELL}
        self.closed_p99 = {
            r.proxy: r.added_p99_ms for r in rows if r.cell == "50 ms upstream, 64 conns"
        }
        self.open_p99 = {r.proxy: r.added_p99_ms for r in results.open_loop}
        self.cells = {key: {r.proxy: r for r in rows_} for key, rows_ in results.streams.items()}

    def chunk(self, key: str) -> dict[str, float | None]:
        return {name: row.cpu_us_per_chunk for name, row in self.cells.get(key, {}).items()}

    def per_core(self) -> dict[str, float | None]:
        """Chunks a second back to back, scaled to a whole core: the measured rate over the
        share of its core the proxy used (most peers are held back by the load side there)."""
        return {
            name: row.chunks_per_second / row.proxy_busy
            for name, row in self.cells.get(streams.SATURATION.key, {}).items()
            if row.chunks_per_second and row.proxy_busy
        }

    def per_core_detail(self, name: str) -> str:
        row = self.cells.get(streams.SATURATION.key, {}).get(name)
        if row is None or row.chunks_per_second is None:
            return ""
        return f" ({row.chunks_per_second:,.0f}/s at {percent(row.proxy_busy)})"


@dataclass
class _Row:
    label: str
    values: dict[str, float | None]
    show: Callable[[float], str]
    detail: Callable[[str], str] | None = None
    ratios: bool = True
    """The balancer's figure as multiples of the peers' (not for differences such as p99)."""


def headline(results: Results) -> str:
    figures = _Figures(results)
    columns = [
        name
        for name in [*peers.PEERS, THE_BALANCER]
        if name in results.proxies or name in results.unavailable
    ]
    lines = [
        "| cell | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    us = "{:,.0f} us".format
    us1 = "{:,.1f} us".format
    rows = [
        _Row("non-streamed, 0 ms upstream, 16 conns: CPU per request", figures.per_request, us),
        _Row(f"{streams.TOKENS.label}: CPU per chunk", figures.chunk(streams.TOKENS.key), us1),
        _Row(f"{streams.SHORT.label}: CPU per chunk", figures.chunk(streams.SHORT.key), us1),
        _Row(
            f"{streams.SATURATION.label}: CPU per chunk",
            figures.chunk(streams.SATURATION.key),
            us1,
        ),
        _Row(
            f"{streams.SATURATION.label}: chunks/s per core (measured/s at the share of its "
            "core used)",
            figures.per_core(),
            "{:,.0f}".format,
            detail=figures.per_core_detail,
        ),
        _Row(
            "50 ms upstream, 64 conns (wrk, closed loop): added p99",
            figures.closed_p99,
            lambda v: f"{fmt(v, 1, sign=True)} ms",
            ratios=False,
        ),
        _Row(
            f"50 ms upstream, {results.plan.open_loop_rate:,.0f} req/s (open loop): added p99",
            figures.open_p99,
            lambda v: f"{fmt(v, 1, sign=True)} ms",
            ratios=False,
        ),
    ]
    for row in rows:
        cells = []
        for name in columns:
            value = row.values.get(name)
            if name in results.unavailable:
                cells.append("did not start")
            elif value is None:
                cells.append("-")
            else:
                shown = row.show(value)
                if name == THE_BALANCER:
                    shown = f"**{shown}**"
                shown += row.detail(name) if row.detail else ""
                if name == THE_BALANCER and row.ratios:
                    shown += f" ({_ratios(value, row.values)})"
                cells.append(shown)
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + _goals(figures) + "\n"


def _ratios(value: float, values: dict[str, float | None]) -> str:
    parts = []
    for peer in RATIOS_AGAINST:
        other = values.get(peer)
        if other:
            ratio = value / other
            parts.append(f"{ratio:.1f}x {peer}" if ratio >= 0.1 else f"{ratio:.2g}x {peer}")
    return ", ".join(parts) or "no peer measured"


def _goals(figures: _Figures) -> str:
    def ratio(values: dict[str, float | None]) -> str:
        mine, nginx = values.get(THE_BALANCER), values.get("nginx")
        return f"{mine / nginx:.1f}x" if mine is not None and nginx else "-"

    return (
        "Against issue 13's goals: CPU per relayed chunk "
        f"{ratio(figures.chunk(streams.TOKENS.key))} nginx's with token streams, "
        f"{ratio(figures.chunk(streams.SHORT.key))} with 16-chunk streams and "
        f"{ratio(figures.chunk(streams.SATURATION.key))} back to back "
        f"(goal: within {GOALS['chunk']:.0f}x); CPU per non-streamed request "
        f"{ratio(figures.per_request)} nginx's (goal: within {GOALS['request']:.0f}x); added p99 "
        "at 50 ms upstream and 64 connections "
        f"{fmt(figures.closed_p99.get(THE_BALANCER), 1, sign=True)} ms in wrk's closed loop and "
        f"{fmt(figures.open_p99.get(THE_BALANCER), 1, sign=True)} ms with steady-rate arrivals "
        f"(goal: under {GOALS['p99_ms']:.0f} ms)."
    )


def peer_table(results: Results) -> str:
    lines = ["| peer | version | configured as | status |", "|---|---|---|---|"]
    for name in peers.PEERS:
        status = (
            f"**not measured**: {results.unavailable[name]}"
            if name in results.unavailable
            else "measured"
        )
        version = results.versions.get(name, "-")
        lines.append(f"| {name} | {version} | {peers.CONFIGURED[name]} | {status} |")
    return "\n".join(lines) + "\n"


def table(columns: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: the first column left-aligned (names), the others right (figures)."""
    lines = ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def request_table(results: Results) -> str:
    columns = ["cell", "proxy", "req/s", "p50 ms", "p99 ms", "p50 added ms", "p99 added ms"]
    columns += ["CPU us/request", "load core", "errors"]
    rows = [
        [
            r.cell,
            r.proxy,
            fmt(r.rps),
            fmt(r.p50_ms, 2),
            fmt(r.p99_ms, 2),
            fmt(r.added_p50_ms, 2, sign=True),
            fmt(r.added_p99_ms, 2, sign=True),
            fmt(r.cpu_us),
            percent(r.load_busy),
            str(r.errors),
        ]
        for r in results.requests
    ]
    # The cell's name is a name too.
    return table(columns, rows).replace("|---|---:|", "|---|---|", 1)


def open_loop_table(results: Results) -> str:
    columns = ["proxy", "answered/s", "p50 ms", "p99 ms", "p99.9 ms", "p99 added ms"]
    columns += ["CPU us/request", "load core", "errors", "unanswered"]
    rows = [
        [
            r.proxy,
            fmt(r.answered_per_second),
            fmt(r.p50_ms, 2),
            fmt(r.p99_ms, 2),
            fmt(r.p999_ms, 2),
            fmt(r.added_p99_ms, 2, sign=True),
            fmt(r.cpu_us),
            percent(r.load_busy),
            str(r.errors),
            str(r.unanswered),
        ]
        for r in results.open_loop
    ]
    return table(columns, rows)


def stream_table(results: Results, cell: streams.StreamCell) -> str:
    columns = ["proxy", "streams/s", "chunks/s", "first chunk ms", "added", "first chunk p99 ms"]
    columns += ["gap p99 ms", "added", "CPU us/stream", "CPU us/chunk", "proxy core"]
    columns += ["load core", "errors"]
    rows = [
        [
            r.proxy,
            fmt(r.streams_per_second),
            fmt(r.chunks_per_second),
            fmt(r.ttft_ms, 2),
            fmt(r.added_ttft_ms, 2, sign=True),
            fmt(r.ttft_p99_ms, 2),
            fmt(r.gap_p99_ms, 2),
            fmt(r.added_gap_p99_ms, 2, sign=True),
            fmt(r.cpu_us_per_stream),
            fmt(r.cpu_us_per_chunk, 1),
            percent(r.proxy_busy),
            percent(r.load_busy),
            str(r.errors),
        ]
        for r in results.streams.get(cell.key, [])
    ]
    notes = [f"- {r.proxy}: {r.notes}" for r in results.streams.get(cell.key, []) if r.notes]
    return table(columns, rows) + ("\n" + "\n".join(notes) + "\n" if notes else "")


def load_note(results: Results) -> str:
    """How busy the load core was, through the proxies: whether the load could keep up."""
    busiest = {}
    for key, rows in results.streams.items():
        values = [r.load_busy for r in rows if r.proxy != "direct" and r.load_busy is not None]
        if values:
            busiest[key] = max(values)
    parts = ", ".join(f"{key} {value:.0%}" for key, value in busiest.items())
    return f"The load core was at most this busy through any proxy: {parts}."


def sections(results: Results) -> str:
    """Everything the overhead run measured, as markdown."""
    plan = results.plan
    out = [
        "\n## Peers\n\n"
        "Each peer runs alone on core 0 in front of the same two fake workers, as the balancer "
        "does (metrics, probes every 5 s and JSON access logs on, `least_latency`).\n\n",
        peer_table(results),
        "\n## Proxy overhead (non-streamed chat completions)\n\n"
        "Proxy alone on core 0; wrk and two fake workers on core 1; proxies interleaved round by "
        f"round, the order rotating, {plan.rounds} rounds of {plan.request_seconds:.0f} s "
        f"({plan.tail_seconds:.0f} s at 50 ms and 64 connections; {plan.side_rounds} rounds at "
        "0 ms and 64 connections, and at 50 ms and 16), medians. CPU per request is the proxy's "
        "own user+system "
        "time from /proc over the run, divided by the requests; load core is the CPU time of "
        "wrk and the workers over the run (1 core: 100%).\n\n",
        request_table(results),
        f"\n`{TWO_PROCESSES}` runs two processes on both cores, so it shares core 1 with the "
        "load and the workers: its req/s shows how far a second process carries on this 2-core "
        "machine, and its CPU per request counts both processes and their supervisor.\n",
        f"\n## The 50 ms tail with steady-rate arrivals ({plan.open_loop_rate:,.0f} req/s)\n\n"
        "wrk's closed loop waits for an answer before a connection sends again, which hides a "
        "stalled proxy's tail. Here request *i* is due at *i* / rate whatever happened before, "
        "and its latency counts from when it was due (`bench/open_loop.py`, keep-alive "
        "connections opened as needed); requests unanswered 2 s after the last was due count "
        f"as infinitely slow. {plan.rounds} rounds of {plan.tail_seconds:.0f} s, medians "
        "(a proxy far slower than the others, LiteLLM, runs one).\n\n",
        open_loop_table(results),
        "\n## Streams\n\n"
        "Streamed chat completions from `bench/sse_client.py` (this process, on core 1 with the "
        "workers). First chunk: from the request to the first chunk; gap: between two reads of "
        "one stream. CPU per chunk: (the proxy's CPU per stream - its CPU per non-streamed "
        "request, from the 0 ms, 16 connections cell) / chunks per stream; over a window, "
        "(CPU - streams started x CPU per request) / chunks received. Proxy core and load core: "
        "CPU time over wall time. A direct call runs once, as the baseline, and so does a proxy "
        "far slower than the others (LiteLLM).\n",
    ]
    for cell in streams.CELLS:
        how = (
            "one stream per connection, measured from the first start to the last end"
            if cell.whole
            else f"back to back, a window of {plan.stream_seconds if cell is not streams.SATURATION else plan.saturation_seconds:.1f} s"  # noqa: E501
        )
        rounds = plan.side_rounds if cell is streams.SATURATION else plan.rounds
        out.append(f"\n### {cell.label}\n\n{how}; {rounds} rounds, medians.\n\n")
        out.append(stream_table(results, cell))
    out.append(
        "\nBack to back, a proxy relays as fast as its core allows when its core is near 100%; "
        "a proxy whose core is not saturated there is limited by the load side (two Python "
        "workers and the client on one core), and relays at least that much. "
        + load_note(results)
        + "\n"
    )
    if results.failures:
        out.append("\n### Runs that failed\n\n")
        out += [f"- {failure}\n" for failure in results.failures]
    return "".join(out)
