"""Reading an engine's load from its /metrics, in the exposition formats the servers write.

The fixtures in `metrics/` follow each server's own output (HELP and TYPE lines, labels, the
families around the ones read): vLLM 0.10 (v1 engine, both KV-cache names), vLLM 0.6 (v0 names,
two engines), SGLang (its documentation's sample), TGI (metrics-exporter-prometheus: TYPE lines
only, a summary) and llama.cpp's server (`--metrics`, unlabelled).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from probes.engine_metrics import EngineLoad, parse_engine_metrics

FIXTURES = Path(__file__).parent / "metrics"


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("vllm-0.10.txt", EngineLoad(waiting=12, running=7, kv_cache_usage=0.4150390625)),
        # Two engines behind one /metrics: queues add up, KV-cache usage is their mean.
        ("vllm-0.6-data-parallel.txt", EngineLoad(waiting=3, running=8, kv_cache_usage=0.4)),
        ("sglang.txt", EngineLoad(waiting=2826, running=162, kv_cache_usage=0.28)),
        ("tgi.txt", EngineLoad(waiting=9, running=4, kv_cache_usage=None)),
        ("llamacpp.txt", EngineLoad(waiting=46, running=4, kv_cache_usage=None)),
    ],
)
def test_each_engine_is_read_under_its_own_names(fixture: str, expected: EngineLoad) -> None:
    load = parse_engine_metrics((FIXTURES / fixture).read_text())
    assert load is not None
    assert load.waiting == expected.waiting and load.running == expected.running
    if expected.kv_cache_usage is None:
        assert load.kv_cache_usage is None
    else:
        assert load.kv_cache_usage == pytest.approx(expected.kv_cache_usage)


def test_queue_depth_is_waiting_plus_running_and_unknown_when_neither_is_said() -> None:
    assert EngineLoad(waiting=3, running=2, kv_cache_usage=None).queue_depth == 5
    assert EngineLoad(waiting=None, running=2, kv_cache_usage=None).queue_depth == 2
    assert EngineLoad(waiting=None, running=None, kv_cache_usage=0.5).queue_depth is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<html><body>Not Found</body></html>",
        '{"status": "ok"}',
        # Prometheus text, but of a server that is no inference engine.
        "# HELP process_cpu_seconds_total CPU\n# TYPE process_cpu_seconds_total counter\n"
        "process_cpu_seconds_total 1.5\n",
    ],
)
def test_anything_else_says_nothing(text: str) -> None:
    assert parse_engine_metrics(text) is None


def test_malformed_lines_of_the_families_read_say_nothing() -> None:
    assert parse_engine_metrics('vllm:num_requests_waiting{model_name="m" 3\n') is None
    assert parse_engine_metrics("vllm:num_requests_waiting three\n") is None


def test_impossible_values_are_ignored() -> None:
    text = (
        "vllm:num_requests_waiting -3\nvllm:num_requests_running NaN\nvllm:kv_cache_usage_perc 7\n"
    )
    assert parse_engine_metrics(text) == EngineLoad(waiting=None, running=None, kv_cache_usage=1.0)


def test_a_name_that_only_starts_like_a_known_one_is_not_read() -> None:
    text = "vllm:num_requests_waiting_total 9\nvllm:num_requests_waiting 1\n"
    assert parse_engine_metrics(text) == EngineLoad(waiting=1, running=None, kv_cache_usage=None)
