"""Signals: receivers in the order connected, and nothing built when nobody listens."""

from balancer.config import Settings
from balancer.events import Events, Queued, Signal
from balancer.wiring import build


def test_receivers_are_called_in_the_order_they_connected() -> None:
    heard: list[tuple[str, float]] = []
    signal = Signal[Queued]("queued")
    signal.connect(lambda e: heard.append(("first", e.seconds)))
    signal.connect(lambda e: heard.append(("second", e.seconds)))
    signal.send(Queued("m", 1.5))
    assert heard == [("first", 1.5), ("second", 1.5)]


def test_a_signal_without_receivers_is_false_so_senders_skip_building_parameters() -> None:
    signal = Signal[Queued]("queued")
    assert not signal
    signal.connect(lambda e: None)
    assert signal


def test_wiring_connects_every_signal_but_attempt_started() -> None:
    """attempt_started is for subscribers of one's own (a console, a test); the rest all have
    a receiver in a running balancer."""
    events = build(Settings(store="sqlite:///:memory:")).events
    silent = [name for name in Events.__slots__ if not getattr(events, name)]
    assert silent == ["attempt_started"]
