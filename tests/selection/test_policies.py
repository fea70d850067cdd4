"""What each policy does beyond the contract."""

import random

from balancer.registry import Worker, parse_spec
from balancer.selection.least_latency import DEFAULT_RTT, LeastLatency
from balancer.selection.least_requests import LeastRequests
from balancer.selection.weighted import Weighted
from probes.engine_metrics import EngineLoad


def worker(port: int, weight: float = 1.0) -> Worker:
    return Worker(
        parse_spec(
            {
                "model_name": "m",
                "api": "openai",
                "weight": weight,
                "req_url_template": f"http://127.0.0.1:{port}/v1",
            }
        )
    )


def test_weighted_is_smooth_and_deterministic() -> None:
    a, b, c = worker(1, 5), worker(2, 1), worker(3, 1)
    policy = Weighted()
    order = "".join("abc"[[a, b, c].index(policy.pick([a, b, c], 0.0))] for _ in range(7))
    assert order == "aabacaa"  # nginx's example: no burst of five a's


def test_least_latency_jumps_to_a_slow_sample_and_decays_back() -> None:
    policy = LeastLatency(window=10.0)
    w = worker(1)
    policy.observe(w, 0.01, now=0.0)
    policy.observe(w, 1.0, now=1.0)
    assert policy.estimate(w.id, 1.0) == 1.0  # the peak, at once
    for t in range(2, 40):
        policy.observe(w, 0.01, now=float(t))
    estimate = policy.estimate(w.id, 40.0)
    assert estimate is not None and estimate < 0.05


def test_least_latency_prefers_the_fast_worker() -> None:
    policy = LeastLatency(random.Random(1))
    fast, slow = worker(1), worker(2)
    policy.observe(fast, 0.01, 0.0)
    policy.observe(slow, 0.2, 0.0)
    picks = [policy.pick([fast, slow], 0.1) for _ in range(100)]
    assert picks.count(fast) == 100


def test_a_failure_counts_as_a_long_sample() -> None:
    policy = LeastLatency(failure_penalty=5.0)
    w = worker(1)
    policy.observe(w, 0.01, 0.0)
    policy.observe_failure(w, 0.0)
    assert policy.estimate(w.id, 0.0) == 5.0


def test_a_new_worker_starts_at_its_siblings_average() -> None:
    policy = LeastLatency(random.Random(1))
    old, new = worker(1), worker(2)
    policy.observe(old, 0.3, 0.0)
    assert policy.estimate(new.id, 0.0) is None
    assert policy._neutral([old, new], 0.0) == 0.3
    assert policy._neutral([new], 0.0) == DEFAULT_RTT


def test_in_flight_requests_raise_the_cost() -> None:
    policy = LeastLatency(random.Random(1))
    busy, idle = worker(1), worker(2)
    policy.observe(busy, 0.01, 0.0)
    policy.observe(idle, 0.03, 0.0)
    busy.inflight = 10
    assert all(policy.pick([busy, idle], 0.0) is idle for _ in range(20))


def test_least_latency_scans_every_worker_of_a_small_pool() -> None:
    """Two random workers of five miss the one idle worker 60% of the time; a scan never does."""
    pool = [worker(port) for port in range(1, 6)]
    for w in pool:
        w.inflight = 4
    idle = pool[3]
    idle.inflight = 0
    scanning, drawing = LeastLatency(random.Random(1)), LeastLatency(random.Random(1), scan_up_to=0)
    for policy in (scanning, drawing):
        for w in pool:
            policy.observe(w, 0.05, 0.0)
    assert all(scanning.pick(pool, 0.0) is idle for _ in range(100))
    assert sum(drawing.pick(pool, 0.0) is idle for _ in range(100)) < 60


def test_least_latency_scanning_spreads_equally_cheap_workers() -> None:
    pool = [worker(port) for port in range(1, 6)]
    policy = LeastLatency(random.Random(1))
    picked = {policy.pick(pool, 0.0).id for _ in range(100)}
    assert picked == {w.id for w in pool}


def test_least_latency_draws_two_in_a_large_pool() -> None:
    pool = [worker(port) for port in range(1, 21)]
    for w in pool[1:]:
        w.inflight = 4
    policy = LeastLatency(random.Random(1))
    assert sum(policy.pick(pool, 0.0) is pool[0] for _ in range(200)) < 40  # about 10%


def test_forgetting_a_worker_drops_its_estimate() -> None:
    policy = LeastLatency()
    w = worker(1)
    policy.observe(w, 0.1, 0.0)
    policy.forget(w.id)
    assert policy.estimate(w.id, 0.0) is None


def test_load_aware_policies_count_the_engines_queue_on_top_of_ours() -> None:
    idle, busy = worker(1), worker(2)
    busy.set_engine_load(EngineLoad(waiting=30, running=8, kv_cache_usage=0.9))
    for policy in (LeastRequests(random.Random(1)), LeastLatency(random.Random(1))):
        if isinstance(policy, LeastLatency):
            policy.observe(idle, 0.05, 0.0)
            policy.observe(busy, 0.05, 0.0)
        idle.inflight = 10  # ours: many, but fewer than the engine's queue elsewhere
        picks = [policy.pick([idle, busy], 0.0) for _ in range(50)]
        assert picks.count(idle) == 50, type(policy).__name__


def test_the_engines_queue_counts_only_what_is_beyond_our_own_in_flight() -> None:
    w = worker(1)
    w.inflight = 6
    w.set_engine_load(EngineLoad(waiting=2, running=8, kv_cache_usage=None))
    assert w.engine_queue == 4  # ten held, six of them ours
    w.set_engine_load(EngineLoad(waiting=0, running=3, kv_cache_usage=None))
    assert w.engine_queue == 0  # a stale reading never makes ours count less
    w.set_engine_load(None)
    assert w.engine_queue == 0 and w.describe()["queue_depth"] is None
