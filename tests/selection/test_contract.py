"""The contract every selection policy meets, through the Selector, on a fake clock."""

import random
from collections import Counter, deque

import pytest

from balancer.events import AttemptSucceeded
from balancer.registry import Worker, parse_spec
from balancer.selection import POLICIES, Selector


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_workers(*weights: float) -> list[Worker]:
    return [
        Worker(
            parse_spec(
                {
                    "model_name": "m",
                    "api": "openai",
                    "weight": weight,
                    "req_url_template": f"http://127.0.0.1:{9000 + i}/v1",
                }
            )
        )
        for i, weight in enumerate(weights)
    ]


def run_load(
    selector: Selector, workers: list[Worker], picks: int, concurrency: int = 8
) -> Counter[str]:
    """Picks under a steady load: each pick holds a slot; the oldest finishes (in 50 ms) first."""
    clock: FakeClock = selector.clock  # type: ignore[assignment]
    counts: Counter[str] = Counter()
    in_flight: deque[Worker] = deque()
    for _ in range(picks):
        worker = selector.choose("m", workers).worker
        assert worker is not None
        counts[worker.id] += 1
        worker.inflight += 1
        in_flight.append(worker)
        if len(in_flight) >= concurrency:
            done = in_flight.popleft()
            done.inflight -= 1
            clock.now += 0.005
            selector.on_attempt_succeeded(AttemptSucceeded(done, 0.05))
    return counts


@pytest.fixture(params=sorted(POLICIES))
def selector(request: pytest.FixtureRequest) -> Selector:
    return Selector(request.param, clock=FakeClock(), rng=random.Random(7))


def test_spreads_across_all_selectable_workers(selector: Selector) -> None:
    workers = make_workers(1, 1, 1, 1)
    counts = run_load(selector, workers, 2000)
    assert set(counts) == {w.id for w in workers}
    assert min(counts.values()) > 2000 / 4 * 0.5


def test_never_picks_an_ejected_worker(selector: Selector) -> None:
    workers = make_workers(1, 1, 1)
    workers[1].health.status = "ejected"
    counts = run_load(selector, workers, 500)
    assert workers[1].id not in counts
    assert not selector.choose("m", workers).panic


def test_respects_weights_over_many_picks(selector: Selector) -> None:
    heavy, light = make_workers(3, 1)
    counts = run_load(selector, [heavy, light], 4000)
    assert 2.0 <= counts[heavy.id] / counts[light.id] <= 4.5


def test_panic_mode_when_every_worker_is_ejected(selector: Selector) -> None:
    workers = make_workers(1, 1)
    for w in workers:
        w.health.status = "ejected"
    choice = selector.choose("m", workers)
    assert choice.worker in workers
    assert choice.panic


def test_excluded_workers_are_not_chosen(selector: Selector) -> None:
    workers = make_workers(1, 1, 1)
    choice = selector.choose("m", workers, exclude={workers[0].id, workers[1].id})
    assert choice.worker is workers[2]
    none = selector.choose("m", workers, exclude={w.id for w in workers})
    assert (none.worker, none.why) == (None, "exhausted")


def test_workers_at_max_concurrency_are_skipped(selector: Selector) -> None:
    full, free = make_workers(1, 1)
    full = Worker(parse_spec({**full.spec.model_dump(exclude_none=True), "max_concurrency": 2}))
    full.inflight = 2
    for _ in range(50):
        assert selector.choose("m", [full, free]).worker is free
    free.inflight = 10**6
    free_limited = Worker(
        parse_spec({**free.spec.model_dump(exclude_none=True), "max_concurrency": 1})
    )
    free_limited.inflight = 1
    choice = selector.choose("m", [full, free_limited])
    assert (choice.worker, choice.why) == (None, "at_capacity")


def test_workers_backing_off_after_429_are_skipped(selector: Selector) -> None:
    a, b = make_workers(1, 1)
    a.skip_until = selector.clock() + 5
    for _ in range(50):
        assert selector.choose("m", [a, b]).worker is b
    b.skip_until = selector.clock() + 5
    assert selector.choose("m", [a, b]).why == "backing_off"
