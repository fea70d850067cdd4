"""bench/replication.py runs: replicas on a real redis-server, a few changes timed (the figure
itself is the benchmark's, never asserted)."""

from pathlib import Path

from bench import replication


def test_the_replication_benchmark_runs_and_reports(tmp_path: Path) -> None:
    result = replication.run(tmp_path, replicas=2, changes=3)
    assert (result.replicas, result.changes, len(result.seconds)) == (2, 3, 3)
    section = replication.section(result)
    assert "| replicas | changes | median ms | p99 ms | max ms |" in section
    assert section.count("\n| 2 | 3 |") == 1
