"""What the console shows, from the events alone, on a fake clock: rates over the last seconds,
percentiles and error ratios over the last minute, one point a second for the sparklines."""

from __future__ import annotations

from balancer.errors import UpstreamError
from balancer.events import (
    AttemptFailed,
    AttemptSucceeded,
    RegistryChanged,
    RequestFinished,
    RequestRecord,
)
from balancer.live import HISTORY_SECONDS, RATE_SECONDS, SAMPLES_PER_SECOND, LiveStats
from balancer.registry import Worker, WorkerSpec
from tests.conftest import FakeClock


def make_worker(stats: LiveStats, name: str = "w1", model: str = "m") -> Worker:
    """A worker, registered (workers are counted from their registration on)."""
    spec = WorkerSpec(model_name=model, api="openai", req_url_template=f"http://{name}/v1")
    worker = Worker(spec)
    stats.on_registry_changed(RegistryChanged("registered", worker))
    return worker


def finished(
    worker: Worker | None, status: int = 200, seconds: float = 0.1, **fields: object
) -> RequestFinished:
    record = RequestRecord("openai", 0.0, model="m", worker=worker.id if worker else None)
    for key, value in fields.items():
        setattr(record, key, value)
    return RequestFinished(record, status, seconds)


def test_nothing_seen_is_zero_and_unknown(clock: FakeClock) -> None:
    stats = LiveStats(clock)
    summary = stats.worker("nobody")
    assert summary.qps == 0
    assert (summary.error_ratio, summary.p50_ms, summary.p99_ms) == (None, None, None)
    assert summary.qps_history == [0.0] * HISTORY_SECONDS
    assert summary.latency_history == [None] * HISTORY_SECONDS


def test_qps_is_over_the_last_whole_seconds(clock: FakeClock) -> None:
    stats = LiveStats(clock)
    worker = make_worker(stats)
    for _ in range(RATE_SECONDS):
        for _ in range(3):
            stats.on_attempt_succeeded(AttemptSucceeded(worker, 0.05))
        clock.advance(1)
    assert stats.worker(worker.id).qps == 3.0
    # The second still filling counts only once it is over.
    for _ in range(100):
        stats.on_attempt_succeeded(AttemptSucceeded(worker, 0.05))
    assert stats.worker(worker.id).qps == 3.0
    assert stats.worker(worker.id).qps_history[-3:] == [3.0, 3.0, 3.0]


def test_percentiles_and_error_ratio_are_over_the_last_minute(clock: FakeClock) -> None:
    stats = LiveStats(clock)
    worker = make_worker(stats)
    for ms in range(1, 101):
        stats.on_attempt_succeeded(AttemptSucceeded(worker, ms / 1000))
        if ms == 50:
            clock.advance(1)
    error = UpstreamError("boom", retryable=True)
    stats.on_attempt_failed(AttemptFailed(worker, error, 0.01))
    clock.advance(1)
    summary = stats.worker(worker.id)
    assert summary.p50_ms == 50
    assert summary.p99_ms == 99
    assert summary.error_ratio == 1 / 101
    assert summary.latency_history[-2:] == [25.5, 75.5]
    clock.advance(61)
    later = stats.worker(worker.id)
    assert (later.p50_ms, later.error_ratio) == (None, None)


def test_refusals_of_the_callers_mistakes_count_as_requests_but_not_latency(
    clock: FakeClock,
) -> None:
    stats = LiveStats(clock)
    worker = make_worker(stats)
    stats.on_attempt_succeeded(AttemptSucceeded(worker, 0.001, answered=False))
    clock.advance(1)
    summary = stats.worker(worker.id)
    assert summary.qps_history[-1] == 1
    assert summary.p50_ms is None


def test_a_model_counts_what_its_clients_got(clock: FakeClock) -> None:
    stats = LiveStats(clock)
    worker = make_worker(stats)
    stats.on_request_finished(finished(worker, 200))
    stats.on_request_finished(finished(None, 503))
    stats.on_request_finished(finished(worker, 400))
    stats.on_request_finished(finished(worker, 499))
    clock.advance(1)
    summary = stats.model("m")
    assert summary.error_ratio == 1 / 4
    assert summary.qps_history[-1] == 4


def test_time_to_first_token_and_tokens_per_second_per_worker(clock: FakeClock) -> None:
    stats = LiveStats(clock)
    worker = make_worker(stats)
    stats.on_request_finished(finished(worker, ttft=0.2, output_tokens=100, generation_seconds=2.0))
    stats.on_request_finished(finished(worker, ttft=0.4, output_tokens=300, generation_seconds=2.0))
    clock.advance(1)
    summary = stats.worker(worker.id)
    assert summary.ttft_ms == 200
    assert summary.tokens_per_second == 100
    assert summary.as_dict()["tokens_per_second"] == 100


def test_a_removed_worker_and_model_are_forgotten(clock: FakeClock) -> None:
    stats = LiveStats(clock)
    worker = make_worker(stats)
    stats.on_attempt_succeeded(AttemptSucceeded(worker, 0.05))
    stats.on_request_finished(finished(worker))
    stats.on_registry_changed(RegistryChanged("removed", worker, model_gone=True))
    # A request that ends after its model's last worker was removed is counted nowhere.
    stats.on_attempt_succeeded(AttemptSucceeded(worker, 0.05))
    stats.on_request_finished(finished(worker))
    clock.advance(1)
    assert stats.worker(worker.id).qps_history[-1] == 0
    assert stats.model("m").qps_history[-1] == 0
    assert (stats._workers, stats._models) == ({}, {})


def test_a_busy_second_keeps_a_bounded_sample_of_its_latencies(clock: FakeClock) -> None:
    stats = LiveStats(clock)
    worker = make_worker(stats)
    for _ in range(SAMPLES_PER_SECOND * 10):
        stats.on_attempt_succeeded(AttemptSucceeded(worker, 0.02))
    clock.advance(1)
    summary = stats.worker(worker.id)
    assert summary.qps_history[-1] == SAMPLES_PER_SECOND * 10  # every answer is counted
    assert summary.p50_ms == 20


def test_a_summary_holds_for_the_rest_of_the_second(clock: FakeClock) -> None:
    stats = LiveStats(clock)
    worker = make_worker(stats)
    stats.on_attempt_succeeded(AttemptSucceeded(worker, 0.02))
    clock.advance(1)
    first = stats.worker(worker.id)
    stats.on_attempt_succeeded(AttemptSucceeded(worker, 0.02))
    clock.advance(0.5)
    assert stats.worker(worker.id) is first
    clock.advance(0.5)
    assert stats.worker(worker.id).qps_history[-2:] == [1.0, 1.0]
