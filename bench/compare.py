"""This checkout against another, side by side in one interleaved run, with nginx for scale.

    python -m bench.compare /path/to/other/checkout [--seconds 5] [--rounds 5] [--only streams]

For a change that must not make the hot path dearer: `git worktree add /tmp/before <commit>`, then
compare. Each proxy runs alone on core 0; wrk, the stream client and two fake workers share core 1;
the proxies take turns round after round (the two balancers swapping places every round), so
noise on the machine hits them alike. Prints, per cell, the CPU of each per request (or per
stream of 16 chunks), and the median of the rounds' paired ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from balancer.fakes.processes import WorkerProcess
from bench import peers, streams
from bench.harness import Process, Proxy, balancer, fake_worker, on_load_core, register
from bench.overhead import measure


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare")
    parser.add_argument("other", type=Path, help="another checkout of llm-balancer")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=("requests", "streams"), help="one of the two cells")
    args = parser.parse_args()
    other = args.other.resolve()
    # The stream client runs in this process: it is load.
    with on_load_core(), tempfile.TemporaryDirectory(prefix="llm-balancer-compare-") as name:
        tmp = Path(name)
        procs: list[Process] = []
        try:
            w1, url1 = fake_worker(tmp, "w1")
            w2, url2 = fake_worker(tmp, "w2")
            procs += [w1, w2]
            started = peers.start(tmp, [url1, url2], ["nginx"])
            procs += started.processes
            if not started.proxies:
                sys.exit(f"nginx: {started.unavailable['nginx']}")
            this, this_url = balancer(tmp, name="this")
            that, that_url = balancer(tmp, name="other", source=other)
            procs += [this, that]
            for url in (this_url, that_url):
                register(url, "bench", [url1, url2], strategy="least_latency")
            proxies = [
                started.proxies[0],
                Proxy("this", this_url, [this.pid]),
                Proxy(f"other ({other.name})", that_url, [that.pid]),
            ]
            if args.only != "streams":
                requests(proxies, tmp, args.seconds, args.rounds)
            if args.only != "requests":
                stream_cells(proxies, args.seconds, args.rounds, [w1, w2], [w1.pid, w2.pid])
        finally:
            for proc in reversed(procs):
                proc.stop()
    return 0


def requests(proxies: list[Proxy], tmp: Path, seconds: float, rounds: int) -> None:
    print(f"non-streamed, 0 ms upstream, 16 connections, {rounds} rounds")
    cpu: dict[str, list[float]] = {p.name: [] for p in proxies}
    for proxy in proxies:
        measure(proxy, connections=16, seconds=1, tmp=tmp)  # warm-up
    for round_ in range(rounds):
        for proxy in _order(proxies, round_):
            result, per_request = measure(proxy, connections=16, seconds=seconds, tmp=tmp)
            assert per_request is not None and not result.errors, result
            cpu[proxy.name].append(per_request)
    _report(cpu, "us CPU per request")


def stream_cells(
    proxies: list[Proxy],
    seconds: float,
    rounds: int,
    workers: list[WorkerProcess],
    load_pids: list[int],
) -> None:
    print(f"\n{streams.SHORT.label}, {rounds} rounds")
    streams.prepare(streams.SHORT, workers)
    cpu: dict[str, list[float]] = {p.name: [] for p in proxies}
    for round_ in range(rounds):
        for proxy in _order(proxies, round_):
            sample = streams.sample(proxy, streams.SHORT, seconds=seconds, load_pids=load_pids)
            assert isinstance(sample["cpu_us_per_stream"], float) and not sample["errors"]
            cpu[proxy.name].append(sample["cpu_us_per_stream"])
    _report(cpu, "us CPU per stream")


def _order(proxies: list[Proxy], round_: int) -> list[Proxy]:
    """nginx first; the two balancers swap places every round, so neither always goes first."""
    return [proxies[0], *(proxies[1:] if round_ % 2 == 0 else proxies[:0:-1])]


def _report(cpu: dict[str, list[float]], unit: str) -> None:
    medians = {name: statistics.median(values) for name, values in cpu.items()}
    base = next(iter(medians.values()))
    for name, values in cpu.items():
        spread = ", ".join(f"{v:.0f}" for v in values)
        print(
            f"  {name:<28} {medians[name]:8.1f} {unit} ({medians[name] / base:.1f}x nginx)"
            f"  runs: {spread}"
        )
    names = list(medians)
    paired = [a / b for a, b in zip(cpu[names[1]], cpu[names[2]], strict=True)]
    print(
        f"  this / other: {medians[names[1]] / medians[names[2]]:.3f} (medians); "
        f"{statistics.median(paired):.3f} (median of the rounds' ratios: "
        + ", ".join(f"{r:.2f}" for r in paired)
        + ")"
    )


if __name__ == "__main__":
    sys.exit(main())
