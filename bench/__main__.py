"""Run the whole benchmark and write bench/results/latest.md: `python -m bench [--quick]`."""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from bench import overhead, replication, report, routing, scale, selection

RESULTS = Path(__file__).parent / "results" / "latest.md"


def machine(versions: dict[str, str]) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    wrk_version = (wrk.stdout or wrk.stderr).split("\n")[0].split(" [")[0]
    packages = ", ".join(
        f"{name} {version(name)}"
        for name in (
            "uvicorn",
            "fastapi",
            "starlette",
            "aiohttp",
            "httpx",
            "structlog",
            "prometheus-client",
            "orjson",
            "uvloop",
            "httptools",
        )
    )
    cores = len(list(Path("/sys/devices/system/cpu").glob("cpu[0-9]*")))
    peers = ", ".join(f"{name} {v}" for name, v in versions.items())
    return (
        f"- CPU: {cpu}, {cores} cores; Linux {platform.release()}\n"
        f"- Python {platform.python_version()}; {wrk_version}; {peers}\n"
        f"- {packages}"
    )


fmt = report.fmt


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke test")
    args = parser.parse_args()
    plan = overhead.QUICK if args.quick else overhead.Plan()
    soak_seconds = 30.0 if args.quick else 300.0
    started = time.monotonic()
    out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="llm-balancer-bench-") as name:
        tmp = Path(name)
        print("overhead cells ...", file=sys.stderr, flush=True)
        proxies = overhead.run(tmp, plan)
        print("selection simulation ...", file=sys.stderr, flush=True)
        simulated = selection.run()
        print("selection, live ...", file=sys.stderr, flush=True)
        live = selection.live(tmp)
        print("probe scale ...", file=sys.stderr, flush=True)
        probes = scale.probe_scale(tmp)
        print("soak ...", file=sys.stderr, flush=True)
        soaked = scale.soak(tmp, seconds=soak_seconds, warmup=min(60.0, soak_seconds / 3))
        print("replication ...", file=sys.stderr, flush=True)
        replicated = replication.run(tmp, changes=20 if args.quick else 100)
        print("routing on simulated engines ...", file=sys.stderr, flush=True)
        routed = routing.run(tmp, routing.QUICK if args.quick else routing.FULL)

    out.append("# Benchmark results\n\n")
    out.append(
        f"Written by `scripts/bench` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f" in {time.monotonic() - started:.0f} s{' (--quick)' if args.quick else ''}.\n\n"
    )
    out.append(machine(proxies.versions) + "\n")
    out.append(
        "\n## Headline\n\n"
        "Each proxy alone on one core (core 0) in front of the same two fake workers, measured "
        "in one interleaved run; the balancer with metrics, probes and JSON access logs on. "
        "Lower is better, except chunks/s.\n\n"
    )
    out.append(report.headline(proxies))
    out.append(report.sections(proxies))
    out.append(
        "\n## Selection quality (simulation)\n\n"
        f"{selection.__doc__.split(chr(10), 2)[2].strip()}\n\n"
        "| policy | requests | mean ms | p99 ms | client errors | share of slow-10x | "
        "share of fails-20pct |\n|---|---:|---:|---:|---:|---:|---:|\n"
    )
    for r in simulated:
        out.append(
            f"| {r.policy} | {r.requests:,} | {fmt(r.mean_ms, 1)} | {fmt(r.p99_ms, 1)} | "
            f"{r.error_rate:.2%} | {r.shares.get('slow-10x', 0):.1%} | "
            f"{r.shares.get('fails-20pct', 0):.1%} |\n"
        )
    out.append(
        "\nRound robin and weighted overload the slow (and, mid-run, the degraded) worker, whose "
        "queue then grows for the rest of the run: in production their timeouts would cut it "
        "short, as errors.\n\n"
        "### Live, at a smaller scale\n\n"
        "Fake worker processes (20 ms; 200 ms; 20 ms → 100 ms in the middle third; 20 ms failing "
        "20% at once), Poisson arrivals at 60 req/s through the balancer.\n\n"
        "| policy | requests | mean ms | p99 ms | client errors | share of slow-10x |\n"
        "|---|---:|---:|---:|---:|---:|\n"
    )
    for r in live:
        out.append(
            f"| {r.policy} | {r.requests:,} | {fmt(r.mean_ms, 1)} | {fmt(r.p99_ms, 1)} | "
            f"{r.error_rate:.2%} | {r.shares.get('slow-10x', 0):.1%} |\n"
        )
    out.append(
        f"\n## Probe scale\n\n{probes.workers:,} registered workers probed every 5 s (the "
        f"default): {probes.probes_per_second:.0f} probes/s cost the balancer "
        f"{probes.idle_cpu_percent_with:.1f}% of a core at idle (without them: "
        f"{probes.idle_cpu_percent_without:.1f}%), about {probes.cpu_us_per_probe:.0f} us of CPU "
        "per probe.\n\n"
        "| under load (0 ms upstream, 16 conns) | req/s | p50 ms | p99 ms |\n|---|---:|---:|---:|\n"
        f"| without probed workers | {fmt(probes.without.requests_per_second)} | "
        f"{fmt(probes.without.p50_ms, 2)} | {fmt(probes.without.p99_ms, 2)} |\n"
        f"| with {probes.workers:,} probed workers | {fmt(probes.with_probed.requests_per_second)}"
        f" | {fmt(probes.with_probed.p50_ms, 2)} | {fmt(probes.with_probed.p99_ms, 2)} |\n"
    )
    out.append(
        f"\n## Soak\n\n{soaked.seconds:.0f} s of steady load ({soaked.requests:,} requests), "
        f"while {soaked.churned_workers:,} workers were registered and removed and "
        f"{soaked.bad_models:,} requests named models that do not exist. RSS "
        f"{soaked.rss_start_mib:.1f} MiB at the start, {soaked.rss_end_mib:.1f} MiB at the end; "
        f"slope after warm-up **{soaked.slope_kib_per_min:+.1f} KiB/min**.\n\n"
        "| seconds | RSS MiB |\n|---:|---:|\n"
    )
    for t, rss in soaked.samples[:: max(1, len(soaked.samples) // 12)]:
        out.append(f"| {t:.0f} | {rss / 2**20:.1f} |\n")
    out.append(replication.section(replicated))
    out.append(routing.section(routed))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("".join(out))
    print(f"wrote {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
