"""The health state machine, on a fake clock: no sockets, no sleeps."""

import pytest

from probes.health import HealthPolicy, WorkerHealth, may_eject

POLICY = HealthPolicy(
    healthy_threshold=2,
    unhealthy_threshold=3,
    passive_failures=5,
    base_ejection_time=30.0,
    max_ejection_time=300.0,
    max_ejection_percent=50.0,
)


def fresh(now: float = 0.0) -> WorkerHealth:
    return WorkerHealth(POLICY, now)


def test_a_new_worker_is_unknown_until_its_first_probe_succeeds() -> None:
    health = fresh()
    assert health.status == "unknown"
    transition = health.probe_succeeded(1.0, latency_ms=3.0)
    assert transition is not None and (transition.old, transition.new) == ("unknown", "healthy")
    assert health.since == 1.0
    assert health.last_probe_latency_ms == 3.0


@pytest.mark.parametrize("start_healthy", [True, False])
def test_unhealthy_threshold_failures_eject(start_healthy: bool) -> None:
    health = fresh()
    if start_healthy:
        health.probe_succeeded(0.0, 1.0)
    assert health.probe_failed(1.0, "refused") is None
    assert health.probe_failed(2.0, "refused") is None
    transition = health.probe_failed(3.0, "refused")
    assert transition is not None and transition.new == "ejected"
    assert "3 probes failed" in transition.reason
    assert (health.ejections, health.ejection_reason, health.since) == (1, "probe", 3.0)


def test_a_success_resets_the_failure_count() -> None:
    health = fresh()
    health.probe_succeeded(0.0, 1.0)
    health.probe_failed(1.0, "x")
    health.probe_failed(2.0, "x")
    health.probe_succeeded(3.0, 1.0)
    assert health.probe_failed(4.0, "x") is None
    assert health.status == "healthy"


def test_an_ejected_worker_needs_healthy_threshold_successes_to_recover() -> None:
    health = fresh()
    for t in range(3):
        health.probe_failed(float(t), "down")
    assert health.probe_succeeded(4.0, 1.0) is None
    transition = health.probe_succeeded(5.0, 1.0)
    assert transition is not None and (transition.old, transition.new) == ("ejected", "healthy")
    assert health.ejection_reason is None


def test_the_last_ejection_reason_is_kept_after_the_worker_is_back() -> None:
    health = fresh()
    for t in range(3):
        health.probe_failed(float(t), "refused")
    health.probe_succeeded(4.0, 1.0)
    health.probe_succeeded(5.0, 1.0)
    assert health.status == "healthy"
    assert health.last_ejection == "3 probes failed: refused"


def test_live_failures_eject_at_once_for_base_ejection_time() -> None:
    health, other = fresh(), fresh()
    siblings = [health, other]
    for _ in range(4):
        assert health.request_failed(10.0, "HTTP 500", siblings) is None
    transition = health.request_failed(10.0, "HTTP 500", siblings)
    assert transition is not None and transition.new == "ejected"
    assert health.ejection_reason == "passive"
    assert health.ejected_until == 40.0


def test_a_live_success_resets_the_passive_count() -> None:
    health, other = fresh(), fresh()
    for _ in range(4):
        health.request_failed(0.0, "x", [health, other])
    health.request_succeeded()
    assert health.request_failed(0.0, "x", [health, other]) is None


def test_live_failures_before_the_first_probe_still_count() -> None:
    health = fresh()
    siblings = [health, fresh()]
    for _ in range(3):
        assert health.request_failed(0.5, "HTTP 401", siblings) is None
    health.probe_succeeded(1.0, latency_ms=3.0)  # unknown -> healthy: the failures stay
    assert health.passive_failures == 3
    health.request_failed(1.5, "HTTP 401", siblings)
    transition = health.request_failed(1.6, "HTTP 401", siblings)
    assert transition is not None and transition.new == "ejected"


def test_passive_ejection_grows_with_each_ejection_and_is_capped() -> None:
    health, other = fresh(), fresh()
    durations = []
    now = 0.0
    for _ in range(12):
        for _ in range(5):
            health.request_failed(now, "x", [health, other])
        assert health.status == "ejected"
        assert health.ejected_until is not None
        durations.append(health.ejected_until - now)
        now = health.ejected_until
        health.probe_succeeded(now, 1.0)
        back = health.probe_succeeded(now, 1.0)
        assert back is not None and back.new == "healthy"
    assert durations[:3] == [30.0, 60.0, 90.0]
    assert max(durations) == 300.0


def test_probes_do_not_end_a_passive_ejection_early() -> None:
    health, other = fresh(), fresh()
    for _ in range(5):
        health.request_failed(0.0, "x", [health, other])
    for t in (1.0, 2.0, 29.0):
        assert health.probe_succeeded(t, 1.0) is None
    transition = health.probe_succeeded(30.0, 1.0)
    assert transition is not None and transition.new == "healthy"


def test_passive_detection_never_ejects_more_than_max_percent() -> None:
    a, b, c, d = fresh(), fresh(), fresh(), fresh()
    siblings = [a, b, c, d]
    for health in siblings:
        for _ in range(5):
            health.request_failed(0.0, "x", siblings)
    assert [h.status for h in siblings].count("ejected") == 2


def test_a_lone_worker_is_never_ejected_by_live_traffic() -> None:
    alone = fresh()
    for _ in range(50):
        alone.request_failed(0.0, "x", [alone])
    assert alone.status == "unknown"


def test_may_eject_counts_probe_ejections_too() -> None:
    a, b = fresh(), fresh()
    for t in range(3):
        a.probe_failed(float(t), "down")
    assert not may_eject([a, b], 50.0)
    assert may_eject([a, b], 100.0)


def eject_passively(health: WorkerHealth, now: float) -> float:
    """Five failed requests in a row at `now`; returns how long the ejection lasts."""
    other = fresh()
    for _ in range(POLICY.passive_failures):
        health.request_failed(now, "x", [health, other])
    assert health.status == "ejected" and health.ejected_until is not None
    return health.ejected_until - now


def back_in_service(health: WorkerHealth) -> float:
    """The ejection runs out and probes bring the worker back; returns when."""
    assert health.ejected_until is not None
    now = health.ejected_until
    for _ in range(POLICY.healthy_threshold):
        health.probe_succeeded(now, 1.0)
    assert health.status == "healthy"
    return now


def test_the_ejection_multiplier_decays_while_the_worker_stays_in_service() -> None:
    """As Envoy's: each base_ejection_time in service takes one step off the next ejection."""
    health = fresh()
    now = 0.0
    for expected in (30.0, 60.0, 90.0):
        assert eject_passively(health, now) == expected
        now = back_in_service(health)
    assert health.ejection_multiplier(now) == 3
    assert health.ejection_multiplier(now + 59.0) == 2  # one whole step, not two
    assert health.ejection_multiplier(now + 60.0) == 1
    assert eject_passively(health, now + 60.0) == 60.0  # not 120


def test_a_long_healthy_stretch_forgives_a_bad_hour() -> None:
    health = fresh()
    now = 0.0
    for _ in range(30):  # an hour and more of ejections, each at the cap by the end
        eject_passively(health, now)
        now = back_in_service(health)
    assert eject_passively(health, now) == 300.0
    now = back_in_service(health)
    assert eject_passively(health, now + 3600.0) == 30.0


def test_a_capped_multiplier_decays_from_the_cap() -> None:
    """The multiplier stops growing at the step that reaches max_ejection_time, so two steps in
    service shorten the next ejection however many ejections came before."""
    health = fresh()
    now = 0.0
    for _ in range(20):
        eject_passively(health, now)
        now = back_in_service(health)
    assert health.ejection_multiplier(now) == POLICY.max_multiplier == 10
    assert eject_passively(health, now + 2 * 30.0) == 270.0


def test_the_multiplier_does_not_decay_while_the_worker_is_ejected() -> None:
    health = fresh()
    assert eject_passively(health, 0.0) == 30.0
    now = back_in_service(health)
    for t in range(3):  # then its probes fail, and keep failing for an hour
        health.probe_failed(now + t, "down")
    assert (health.status, health.ejection_reason) == ("ejected", "probe")
    assert health.ejection_multiplier(now + 3600.0) == 2
    for t in range(POLICY.healthy_threshold):
        health.probe_succeeded(now + 3600.0 + t, 1.0)
    assert health.status == "healthy"
    # Probe ejections count as ejections: back for a second, it fails live traffic at once.
    assert eject_passively(health, now + 3602.0) == 90.0
