"""Sticky sessions, on the selector and a fake clock."""

from __future__ import annotations

import random

from balancer.registry import Worker
from balancer.selection import Selector
from balancer.selection.sessions import Sessions, session_of
from tests.conftest import FakeClock
from tests.forwarding.helpers import openai_spec


def fleet(n: int = 3) -> list[Worker]:
    return [Worker(openai_spec(f"h:{i}")) for i in range(1, n + 1)]


def selector(clock: FakeClock, **options: float) -> Selector:
    sessions = Sessions(**options)  # type: ignore[arg-type]
    return Selector("round_robin", clock=clock, rng=random.Random(1), sessions=sessions)


def pick(s: Selector, workers: list[Worker], session: str | None, **kw: object) -> Worker:
    choice = s.choose("m", workers, session=session, **kw)  # type: ignore[arg-type]
    assert choice.worker is not None
    return choice.worker


def test_a_session_sticks_to_the_worker_that_served_it() -> None:
    s, workers = selector(FakeClock()), fleet()
    first = pick(s, workers, "alice")
    assert all(pick(s, workers, "alice") is first for _ in range(10))
    others = {pick(s, workers, None).id for _ in range(6)}
    assert len(others) == 3  # requests without a session still go round


def test_a_session_moves_when_its_worker_is_ejected_and_stays_moved() -> None:
    s, workers = selector(FakeClock()), fleet()
    home = pick(s, workers, "bob")
    home.health.status = "ejected"
    moved = pick(s, workers, "bob")
    assert moved is not home
    home.health.status = "healthy"
    assert pick(s, workers, "bob") is moved  # its cache is now on the new worker


def test_a_session_moves_off_an_overloaded_worker() -> None:
    s, workers = selector(FakeClock(), balance_abs=4, balance_rel=1.5), fleet()
    home = pick(s, workers, "carol")
    home.inflight = 3
    assert pick(s, workers, "carol") is home  # busier, not overloaded
    home.inflight = 10
    assert pick(s, workers, "carol") is not home


def test_a_retry_of_the_same_request_does_not_go_back_to_the_failed_worker() -> None:
    s, workers = selector(FakeClock()), fleet()
    home = pick(s, workers, "dave")
    assert pick(s, workers, "dave", exclude=[home.id]) is not home


def test_sessions_expire_and_are_bounded_in_number() -> None:
    clock = FakeClock()
    s, workers = selector(clock, ttl=60, max_sessions=100), fleet()
    home = pick(s, workers, "erin")
    clock.advance(59)
    assert pick(s, workers, "erin") is home  # each request renews it
    clock.advance(61)
    assert s.sessions.home("m", "erin", workers, clock()) is None
    for i in range(500):
        pick(s, workers, f"user-{i}")
    assert len(s.sessions) == 100
    clock.advance(61)
    pick(s, workers, "last")
    assert len(s.sessions) == 1  # the expired ones went as a new one came


def test_sessions_of_different_models_are_apart() -> None:
    sessions, workers = Sessions(), fleet()
    sessions.remember("m", "x", workers[0], 0.0)
    assert sessions.home("other", "x", workers, 0.0) is None
    assert sessions.home("m", "x", workers, 0.0) is workers[0]


def test_the_session_is_the_header_else_the_openai_user_field() -> None:
    assert session_of("s1", {"user": "u1"}) == "s1"
    assert session_of(None, {"user": "u1"}) == "u1"
    assert session_of(None, {"user": 42}) is None
    assert session_of("", {}) is None
    assert session_of("x" * 10_000, {}) == "x" * 256
