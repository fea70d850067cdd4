"""bench/routing.py runs: simulated engines, the balancer, a short load per policy, the engines'
own counters read back (the figures themselves are the benchmark's, never asserted)."""

from dataclasses import replace
from pathlib import Path

from bench import routing


def test_the_routing_benchmark_runs_and_reports(tmp_path: Path) -> None:
    policies = tuple(p for p in routing.POLICIES if p.name in ("round_robin", "cache_aware"))
    workloads = (replace(routing.SHARED, rate=3.0, think=0.2), replace(routing.UNSHARED, rate=5.0))
    results = routing.run(
        tmp_path, routing.Plan(seconds=1.5, drain=3.0), policies=policies, workloads=workloads
    )
    assert [(r.workload, r.policy) for r in results.rows] == [
        ("A", "round_robin"),
        ("A", "cache_aware"),
        ("B", "round_robin"),
        ("B", "cache_aware"),
    ]
    for row in results.rows:
        assert row.requests > 0 and row.errors == 0, row
        assert sum(row.per_worker.values()) + row.unanswered == row.requests, row
        assert row.hit_rate is not None and 0 <= row.hit_rate <= 1
    # Each run starts cold: the second policy is sent the first one's questions, and finds none.
    assert [r.hit_rate for r in results.rows if r.workload == "B"] == [0.0, 0.0]
    section = routing.section(results)
    assert "### Workload A: shared prefixes" in section
    assert "| **cache_aware** |" in section
