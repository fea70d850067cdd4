"""Every selection policy, through the Selector: spreads load and respects health."""

from collections import Counter

import pytest

from balancer.registry import Worker, parse_spec
from balancer.selection import POLICIES, Selector


def make_workers(n: int) -> list[Worker]:
    return [
        Worker(
            parse_spec(
                {
                    "model_name": "m",
                    "api": "openai",
                    "req_url_template": f"http://127.0.0.1:{9000 + i}/v1",
                }
            )
        )
        for i in range(n)
    ]


@pytest.fixture(params=sorted(POLICIES))
def selector(request: pytest.FixtureRequest) -> Selector:
    return Selector(request.param)


def test_spreads_across_all_selectable_workers(selector: Selector) -> None:
    workers = make_workers(4)
    picks = Counter(selector.choose("m", workers)[0].id for _ in range(400))  # type: ignore[union-attr]
    assert set(picks) == {w.id for w in workers}


def test_never_picks_an_ejected_worker(selector: Selector) -> None:
    workers = make_workers(3)
    workers[1].health.status = "ejected"
    for _ in range(100):
        worker, panic = selector.choose("m", workers)
        assert worker is not workers[1]
        assert not panic


def test_panic_mode_when_every_worker_is_ejected(selector: Selector) -> None:
    workers = make_workers(2)
    for w in workers:
        w.health.status = "ejected"
    worker, panic = selector.choose("m", workers)
    assert worker in workers
    assert panic


def test_excluded_workers_are_not_chosen(selector: Selector) -> None:
    workers = make_workers(3)
    worker, _ = selector.choose("m", workers, exclude={workers[0].id, workers[1].id})
    assert worker is workers[2]
    assert selector.choose("m", workers, exclude={w.id for w in workers}) == (None, False)
