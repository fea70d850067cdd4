"""This checkout against another, side by side in one interleaved run, with nginx for scale.

    python -m bench.compare /path/to/other/checkout [--seconds 5] [--rounds 5] [--only streams]

For a change that must not make the hot path dearer: `git worktree add /tmp/before <commit>`, then
compare. Each proxy runs alone on core 0; wrk, the SSE client and two fake workers share core 1;
the proxies take turns round after round (the two balancers swapping places every round), so
noise on the machine hits them alike. Prints, per cell, the CPU of each per request (or per
stream), and the median of the rounds' paired ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

from bench.harness import Process, balancer, fake_worker, nginx, register, tree
from bench.overhead import Proxy, measure, run_streams


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare")
    parser.add_argument("other", type=Path, help="another checkout of llm-balancer")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=("requests", "streams"), help="one of the two cells")
    args = parser.parse_args()
    other = args.other.resolve()
    with tempfile.TemporaryDirectory(prefix="llm-balancer-compare-") as name:
        tmp = Path(name)
        procs: list[Process] = []
        try:
            w1, url1 = fake_worker(tmp, "w1")
            w2, url2 = fake_worker(tmp, "w2")
            ng, ng_url = nginx(tmp, [url1, url2])
            this, this_url = balancer(tmp, name="this")
            that, that_url = balancer(tmp, name="other", source=other)
            procs += [w1, w2, ng, this, that]
            for url in (this_url, that_url):
                register(url, "bench", [url1, url2], strategy="least_latency")
            proxies = [
                Proxy("nginx", ng_url, tree(ng.pid)),
                Proxy("this", this_url, [this.pid]),
                Proxy(f"other ({other.name})", that_url, [that.pid]),
            ]
            if args.only != "streams":
                requests(proxies, tmp, args.seconds, args.rounds)
            if args.only != "requests":
                for url in (url1, url2):
                    httpx.post(url + "/_control", json={"latency": 0.0}).raise_for_status()
                streams(proxies, tmp, args.seconds, args.rounds, [url1, url2])
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


def streams(
    proxies: list[Proxy], tmp: Path, seconds: float, rounds: int, worker_urls: list[str]
) -> None:
    print(f"\nstreams of 16 chunks 5 ms apart, 16 connections, {rounds} rounds")
    cpu: dict[str, list[float]] = {p.name: [] for p in proxies}
    for round_ in range(rounds):
        # One round each, in this round's order; run_streams gives the CPU per stream.
        for proxy in _order(proxies, round_):
            [row] = run_streams([proxy], tmp, seconds=seconds, rounds=1, worker_urls=worker_urls)
            assert isinstance(row["cpu_us"], float)
            cpu[proxy.name].append(row["cpu_us"])
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
