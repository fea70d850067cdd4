"""The forwarder: failover between workers, retry budget, fallbacks, deadline, capacity queue,
and a worker's slot held for exactly one attempt (or one relayed stream), on a fake transport and
a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import orjson
import pytest

from balancer.config import DEFAULT_UNHEALTHY_THRESHOLD
from balancer.errors import (
    BadRequest,
    BalancerError,
    DeadlineExceeded,
    NoWorkerAvailable,
    UpstreamError,
)
from balancer.events import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    Events,
    Panic,
    Queued,
    Retried,
)
from balancer.fakes.transport import FakeResponse, FakeTransport, SentRequest
from balancer.forwarding import sse
from balancer.forwarding.forwarder import Attempt, Forwarder
from balancer.forwarding.lease import Lease
from balancer.forwarding.prompt import complete_text
from balancer.forwarding.relay import Relayed, relay_openai
from balancer.forwarding.retry_budget import RetryBudget
from balancer.forwarding.transport import TransportError
from balancer.registry import Worker, WorkerRegistry
from balancer.selection import Selector
from balancer.selection.least_latency import LeastLatency
from tests.conftest import FakeClock
from tests.forwarding.helpers import (
    CONNECT_REFUSED,
    RESET,
    TIMED_OUT,
    Answer,
    Heard,
    add_workers,
    by_host,
    completion,
    content_chunk,
    hosts_sent,
    new_record,
    openai_spec,
    role_chunk,
    status,
    streamed,
)

pytestmark = pytest.mark.anyio

CHAT = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


def forwarder_on(
    registry: WorkerRegistry, clock: FakeClock, events: Events, **settings: Any
) -> Forwarder:
    """A forwarder choosing round robin (the first registered worker first)."""
    selector = Selector("round_robin", clock=clock)
    return Forwarder(registry, selector, events=events, clock=clock, **settings)


def relay(transport: FakeTransport, *, stream: bool = False) -> Attempt[Relayed]:
    """An attempt as /v1/chat/completions makes it: the body passed through."""

    async def attempt(lease: Lease) -> Relayed:
        return await relay_openai(transport, lease, "/chat/completions", CHAT, stream=stream)

    return attempt


def prompt(transport: FakeTransport) -> Attempt[str]:
    """An attempt as the OperateGPT API makes it: one prompt, its text back."""

    async def attempt(lease: Lease) -> str:
        return await complete_text(transport, lease, "hi", None)

    return attempt


def answered_when(
    gate: asyncio.Event, answer: FakeResponse
) -> Callable[[SentRequest], Awaitable[FakeResponse]]:
    """A worker busy with the request until `gate` opens."""

    async def busy(request: SentRequest) -> FakeResponse:
        await gate.wait()
        return answer

    return busy


def answered_after(
    clock: FakeClock, seconds: float, answer: FakeResponse
) -> Callable[[SentRequest], Awaitable[FakeResponse]]:
    """A worker that takes `seconds` of the fake clock to answer."""

    async def slow(request: SentRequest) -> FakeResponse:
        clock.advance(seconds)
        return answer

    return slow


def text_of(relayed: Relayed) -> str:
    assert relayed.body is not None
    content: str = orjson.loads(relayed.body)["choices"][0]["message"]["content"]
    return content


def eject(worker: Worker, clock: FakeClock) -> None:
    for _ in range(DEFAULT_UNHEALTHY_THRESHOLD):
        worker.health.probe_failed(clock(), "probe failed")
    assert worker.status == "ejected"


async def stream_from(
    registry: WorkerRegistry, clock: FakeClock, events: Events, response: FakeResponse
) -> tuple[Worker, Relayed]:
    """A stream relayed from one worker, its first chunk received, the rest not yet read."""
    [w1] = await add_workers(registry, "w1")
    transport = by_host({"w1": response})
    served = await forwarder_on(registry, clock, events).run(
        new_record(), "m", relay(transport, stream=True)
    )
    assert served.value.stream is not None
    assert w1.inflight == 1  # held by the stream now, not by the attempt
    return w1, served.value


def close(relayed: Relayed) -> None:
    """What the response's background task does once the response is over."""
    assert relayed.close is not None
    relayed.close()


async def settle() -> None:
    """Let every task that can run, run."""
    for _ in range(20):
        await asyncio.sleep(0)


# Failover


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (CONNECT_REFUSED, "connect"),
        (TIMED_OUT, "timeout"),
        (RESET, "reset"),
        (status(500), "http_500"),
        (status(502), "http_502"),
        (status(503), "http_503"),
        (status(504), "http_504"),
        (status(429), "http_429"),
    ],
    ids=["connect", "timeout", "reset", "500", "502", "503", "504", "429"],
)
async def test_a_retryable_failure_is_retried_on_another_worker(
    registry: WorkerRegistry,
    clock: FakeClock,
    events: Events,
    heard: Heard,
    failure: Answer,
    reason: str,
) -> None:
    _, w2 = await add_workers(registry, "w1", "w2")
    transport = by_host({"w1": failure, "w2": completion("from w2")})

    served = await forwarder_on(registry, clock, events).run(new_record(), "m", relay(transport))

    assert hosts_sent(transport) == ["w1", "w2"]
    assert text_of(served.value) == "from w2"
    assert served.worker is w2
    assert served.attempts == 2
    assert heard.of(Retried) == [Retried("m", reason)]


async def test_a_request_never_tries_the_same_worker_twice(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    await add_workers(registry, "w1", "w2", "w3")
    transport = by_host({host: status(503) for host in ("w1", "w2", "w3")})
    forwarder = forwarder_on(registry, clock, events, max_retries=10)

    with pytest.raises(NoWorkerAvailable, match="every worker failed") as raised:
        await forwarder.run(new_record(), "m", relay(transport))

    assert sorted(hosts_sent(transport)) == ["w1", "w2", "w3"]
    assert raised.value.attempts == 3


async def test_max_retries_bounds_the_attempts(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    hosts = ("w1", "w2", "w3", "w4", "w5")
    await add_workers(registry, *hosts)
    transport = by_host({host: status(503) for host in hosts})
    forwarder = forwarder_on(registry, clock, events, max_retries=2)

    with pytest.raises(NoWorkerAvailable, match="all 3 attempts failed") as raised:
        await forwarder.run(new_record(), "m", relay(transport))

    assert len(set(hosts_sent(transport))) == len(transport.sent) == 3
    assert raised.value.attempts == 3


async def test_a_client_error_is_not_retried_and_the_worker_is_not_charged_for_it(
    registry: WorkerRegistry, clock: FakeClock, events: Events, heard: Heard
) -> None:
    w1, _ = await add_workers(registry, "w1", "w2")
    transport = by_host({"w1": status(400), "w2": completion("unused")})

    with pytest.raises(UpstreamError) as raised:
        await forwarder_on(registry, clock, events).run(new_record(), "m", prompt(transport))

    assert raised.value.status_code == 400
    assert raised.value.attempts == 1
    assert hosts_sent(transport) == ["w1"]
    assert [(e.worker, e.answered) for e in heard.of(AttemptSucceeded)] == [(w1, False)]
    assert heard.of(AttemptFailed) == []
    assert heard.of(Retried) == []


@pytest.mark.parametrize("how", ["relayed", "raised"])
async def test_how_fast_a_worker_refuses_the_callers_mistakes_is_no_latency_sample(
    registry: WorkerRegistry, clock: FakeClock, events: Events, how: str
) -> None:
    """A worker that answers 400 at once (a context too long for it) must not look fast."""
    [w1] = await add_workers(registry, "w1")
    transport = by_host({"w1": status(400)})
    selector = Selector("least_latency", clock=clock)
    events.attempt_succeeded.connect(selector.on_attempt_succeeded)
    forwarder = Forwarder(registry, selector, events=events, clock=clock)
    with contextlib.suppress(UpstreamError):
        await forwarder.run(
            new_record(), "m", relay(transport) if how == "relayed" else prompt(transport)
        )
    policy = selector.policy("m")
    assert isinstance(policy, LeastLatency)
    assert w1.id not in policy._estimates
    assert w1.latency_ms is None


async def test_a_429_is_no_failure_sample_for_least_latency(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    [w1] = await add_workers(registry, "w1")
    transport = by_host({"w1": status(429)})
    selector = Selector("least_latency", clock=clock)
    events.attempt_failed.connect(selector.on_attempt_failed)
    forwarder = Forwarder(registry, selector, events=events, clock=clock)
    with contextlib.suppress(NoWorkerAvailable):
        await forwarder.run(new_record(), "m", relay(transport))
    policy = selector.policy("m")
    assert isinstance(policy, LeastLatency)
    assert w1.id not in policy._estimates


async def test_a_429_with_retry_after_keeps_the_worker_out_for_that_long(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    [w1] = await add_workers(registry, "w1")
    answers: dict[str, Answer] = {"w1": status(429, headers={"Retry-After": "30"})}
    transport = by_host(answers)
    forwarder = forwarder_on(registry, clock, events)

    with pytest.raises(NoWorkerAvailable, match=f"worker {w1.id} answered HTTP 429"):
        await forwarder.run(new_record(), "m", relay(transport))
    assert w1.skip_until == clock.now + 30

    answers["w1"] = completion("back again")
    clock.advance(29)
    with pytest.raises(NoWorkerAvailable, match="back off") as backing_off:
        await forwarder.run(new_record(), "m", relay(transport))
    assert backing_off.value.status_code == 503
    assert len(transport.sent) == 1  # not asked again while it is out

    clock.advance(1)
    served = await forwarder.run(new_record(), "m", relay(transport))
    assert text_of(served.value) == "back again"


# Retry budget


def one_retry_per_window() -> RetryBudget:
    """A budget of one retry per 10 s window, however busy the model."""
    return RetryBudget(ratio=0.0, min_per_second=0.1)


async def test_an_exhausted_retry_budget_stops_retries(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    w1, _ = await add_workers(registry, "w1", "w2")
    transport = by_host({"w1": status(503), "w2": completion("from w2")})
    forwarder = forwarder_on(registry, clock, events, budget=one_retry_per_window)

    served = await forwarder.run(new_record(), "m", relay(transport))
    assert served.attempts == 2  # the window's one retry

    with pytest.raises(NoWorkerAvailable, match="retry budget exhausted") as raised:
        await forwarder.run(new_record(), "m", relay(transport))  # w1 again, round robin

    assert hosts_sent(transport) == ["w1", "w2", "w1"]
    assert raised.value.status_code == 503
    assert raised.value.model == "m"
    assert raised.value.worker == w1.id
    assert raised.value.attempts == 1


async def test_a_quiet_model_can_still_retry_thanks_to_the_budget_floor(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    await add_workers(registry, "w1", "w2")
    transport = by_host({"w1": status(503), "w2": completion("from w2")})

    def with_floor() -> RetryBudget:
        return RetryBudget(ratio=0.2, min_per_second=0.1)

    def ratio_only() -> RetryBudget:
        return RetryBudget(ratio=0.2, min_per_second=0.0)

    served = await forwarder_on(registry, clock, events, budget=with_floor).run(
        new_record(), "m", relay(transport)
    )
    assert served.attempts == 2

    with pytest.raises(NoWorkerAvailable, match="retry budget exhausted"):
        await forwarder_on(registry, clock, events, budget=ratio_only).run(
            new_record(), "m", relay(transport)
        )


async def test_each_model_has_its_own_retry_budget(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    await add_workers(registry, "a1", "a2", model="a")
    await add_workers(registry, "b1", "b2", model="b")
    transport = by_host(
        {"a1": status(503), "a2": completion("a"), "b1": status(503), "b2": completion("b")}
    )
    forwarder = forwarder_on(registry, clock, events, budget=one_retry_per_window)

    assert (await forwarder.run(new_record(), "a", relay(transport))).attempts == 2
    assert (await forwarder.run(new_record(), "b", relay(transport))).attempts == 2


# Fallbacks


async def test_fallbacks_are_tried_in_order_when_the_model_cannot_serve(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    await add_workers(registry, "m1", model="m", fallbacks=["f1", "f2"])
    await add_workers(registry, "f1", model="f1")
    [f2] = await add_workers(registry, "f2", model="f2")
    transport = by_host({"m1": status(503), "f1": CONNECT_REFUSED, "f2": completion("from f2")})
    record = new_record()

    served = await forwarder_on(registry, clock, events).run(record, "m", relay(transport))

    assert hosts_sent(transport) == ["m1", "f1", "f2"]
    assert served.worker is f2
    assert served.attempts == 3
    assert record.model == "m"  # the model the client asked for
    assert record.worker == f2.id


async def test_a_fallback_without_workers_is_skipped(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    await add_workers(registry, "m1", model="m", fallbacks=["unknown", "f"])
    [f] = await add_workers(registry, "f1", model="f")
    transport = by_host({"m1": status(503), "f1": completion("from f")})

    served = await forwarder_on(registry, clock, events).run(new_record(), "m", relay(transport))

    assert served.worker is f
    assert served.attempts == 2


async def test_fallbacks_are_not_tried_after_a_client_error(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    await add_workers(registry, "m1", model="m", fallbacks=["f"])
    await add_workers(registry, "f1", model="f")
    transport = by_host({"m1": status(422), "f1": completion("unused")})

    with pytest.raises(UpstreamError) as raised:
        await forwarder_on(registry, clock, events).run(new_record(), "m", prompt(transport))

    assert raised.value.status_code == 422
    assert hosts_sent(transport) == ["m1"]


# What the client is told when nothing can serve


async def test_when_nothing_can_serve_the_error_is_a_503_naming_the_model(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    _, w2 = await add_workers(registry, "w1", "w2")
    transport = by_host({"w1": CONNECT_REFUSED, "w2": status(500)})

    with pytest.raises(NoWorkerAvailable) as raised:
        await forwarder_on(registry, clock, events).run(new_record(), "m", relay(transport))

    error = raised.value
    assert error.status_code == 503
    assert error.message.startswith("model m: every worker failed; last error: worker ")
    assert "HTTP 500" in error.message
    assert error.model == "m"
    assert error.worker == w2.id
    assert error.attempts == 2


@pytest.mark.parametrize("failure", [CONNECT_REFUSED, TIMED_OUT], ids=["connect", "timeout"])
async def test_one_worker_failing_once_is_a_503_naming_the_model_and_what_the_worker_said(
    registry: WorkerRegistry, clock: FakeClock, events: Events, failure: Answer
) -> None:
    [w1] = await add_workers(registry, "w1")
    transport = by_host({"w1": failure})

    with pytest.raises(NoWorkerAvailable) as raised:
        await forwarder_on(registry, clock, events).run(new_record(), "m", relay(transport))

    assert raised.value.status_code == 503
    assert raised.value.message.startswith("model m: ")
    assert f"worker {w1.id}: " in raised.value.message
    assert "http://" not in raised.value.message
    assert (raised.value.worker, raised.value.attempts) == (w1.id, 1)


async def test_the_request_deadline_stops_further_attempts(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    hosts = ("w1", "w2", "w3")
    await add_workers(registry, *hosts)
    transport = by_host({host: answered_after(clock, 6, status(503)) for host in hosts})
    forwarder = forwarder_on(registry, clock, events, request_timeout=10, max_retries=5)

    with pytest.raises(DeadlineExceeded, match="request timeout") as raised:
        await forwarder.run(new_record(), "m", relay(transport))

    assert raised.value.status_code == 504
    assert len(transport.sent) == 2  # the retry went out at 6 s; at 12 s the deadline had passed
    assert raised.value.attempts == 2


async def test_no_fallback_is_tried_once_the_request_deadline_has_passed(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    await add_workers(registry, "m1", model="m", fallbacks=["f"])
    await add_workers(registry, "f1", model="f")
    transport = by_host({"m1": answered_after(clock, 11, status(503)), "f1": completion("late")})
    forwarder = forwarder_on(registry, clock, events, request_timeout=10)

    with pytest.raises(BalancerError):
        await forwarder.run(new_record(), "m", relay(transport))

    assert hosts_sent(transport) == ["m1"]


# Time limits: the worker's own, and the request's


def never_answers() -> Callable[[SentRequest], Awaitable[FakeResponse]]:
    """A worker that keeps the request (until the attempt's time limit cancels it)."""

    async def busy(request: SentRequest) -> FakeResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return busy


async def test_a_worker_slower_than_its_own_timeout_is_charged_and_the_next_one_serves(
    registry: WorkerRegistry, clock: FakeClock, events: Events, heard: Heard
) -> None:
    w1, _ = await add_workers(registry, "w1", "w2", timeout=0.05)
    transport = by_host({"w1": never_answers(), "w2": completion("from w2")})

    served = await forwarder_on(registry, clock, events).run(new_record(), "m", relay(transport))

    assert (text_of(served.value), served.attempts) == ("from w2", 2)
    [failed] = heard.of(AttemptFailed)
    assert (failed.worker, failed.error.reason) == (w1, "timeout")
    assert "within its timeout of 0.05 s" in failed.error.message
    assert w1.inflight == 0


async def test_without_a_timeout_of_its_own_a_worker_gets_the_balancers_worker_timeout(
    registry: WorkerRegistry, clock: FakeClock, events: Events, heard: Heard
) -> None:
    w1, _ = await add_workers(registry, "w1", "w2")
    transport = by_host({"w1": never_answers(), "w2": completion("from w2")})
    forwarder = forwarder_on(registry, clock, events, worker_timeout=0.05)

    served = await forwarder.run(new_record(), "m", relay(transport))

    assert served.attempts == 2
    assert [f.worker for f in heard.of(AttemptFailed)] == [w1]


async def test_the_request_timeout_ends_an_attempt_under_way_with_a_504_and_no_charge(
    registry: WorkerRegistry, clock: FakeClock, events: Events, heard: Heard
) -> None:
    """The worker's own timeout is longer than what is left of the request: no failover."""
    w1, _ = await add_workers(registry, "w1", "w2")
    transport = by_host({"w1": never_answers(), "w2": completion("too late")})
    forwarder = forwarder_on(registry, clock, events, request_timeout=0.05)

    with pytest.raises(DeadlineExceeded) as raised:
        await forwarder.run(new_record(), "m", relay(transport))

    assert raised.value.status_code == 504
    assert (raised.value.worker, raised.value.attempts) == (w1.id, 1)
    assert len(transport.sent) == 1
    assert heard.of(AttemptFailed) == []
    assert w1.inflight == 0


async def test_a_retry_after_longer_than_max_retry_after_is_cut_to_it(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    w1, _ = await add_workers(registry, "w1", "w2")
    answers: dict[str, Answer] = {
        "w1": status(429, headers={"Retry-After": "86400"}),
        "w2": completion("ok"),
    }
    forwarder = forwarder_on(registry, clock, events, max_retry_after=60)

    await forwarder.run(new_record(), "m", relay(by_host(answers)))

    assert w1.skip_until == clock.now + 60


# The capacity queue


async def test_at_max_concurrency_a_request_waits_and_is_served_when_a_slot_frees(
    registry: WorkerRegistry, clock: FakeClock, events: Events, heard: Heard
) -> None:
    [w1] = await add_workers(registry, "w1", max_concurrency=1)
    gate = asyncio.Event()
    transport = by_host({"w1": answered_when(gate, completion("ok"))})
    forwarder = forwarder_on(registry, clock, events)

    first = asyncio.create_task(forwarder.run(new_record(), "m", relay(transport)))
    await settle()
    second = asyncio.create_task(forwarder.run(new_record(), "m", relay(transport)))
    await settle()
    assert w1.inflight == 1
    assert len(transport.sent) == 1  # the second waits for the slot

    clock.advance(2)
    gate.set()
    served = [await first, await second]

    assert [s.worker for s in served] == [w1, w1]
    assert [s.attempts for s in served] == [1, 1]
    assert heard.of(Queued) == [Queued("m", 2.0)]
    assert w1.inflight == 0


async def test_a_queued_request_gives_up_with_a_503_once_queue_timeout_has_passed(
    registry: WorkerRegistry, clock: FakeClock, events: Events, heard: Heard
) -> None:
    w1, w2 = await add_workers(registry, "w1", "w2", max_concurrency=1)
    gates = {"w1": asyncio.Event(), "w2": asyncio.Event()}
    transport = by_host(
        {host: answered_when(gate, completion(host)) for host, gate in gates.items()}
    )
    forwarder = forwarder_on(registry, clock, events, queue_timeout=5)
    holders = [
        asyncio.create_task(forwarder.run(new_record(), "m", relay(transport))) for _ in range(2)
    ]
    await settle()
    assert (w1.inflight, w2.inflight) == (1, 1)

    def only_w1(worker: Worker) -> bool:
        return worker is w1

    waiting = asyncio.create_task(
        forwarder.run(new_record(), "m", relay(transport), accept=only_w1)
    )
    await settle()
    # The wait itself runs on the event loop's clock, not the injected one; the queue timeout
    # is checked on the injected clock whenever a slot of the model frees: here one of w2,
    # which this request does not accept.
    clock.advance(5)
    gates["w2"].set()

    with pytest.raises(NoWorkerAvailable, match="max_concurrency") as raised:
        await waiting

    assert raised.value.status_code == 503
    assert raised.value.message == (
        "model m: every worker is at its max_concurrency and none freed up in time"
    )
    assert raised.value.attempts == 0
    assert heard.of(Queued) == [Queued("m", 5.0)]
    gates["w1"].set()
    await asyncio.gather(*holders)
    assert (w1.inflight, w2.inflight) == (0, 0)


# Panic routing


async def test_when_every_worker_is_ejected_one_is_chosen_anyway_and_panic_is_sent(
    registry: WorkerRegistry, clock: FakeClock, events: Events, heard: Heard
) -> None:
    w1, w2 = await add_workers(registry, "w1", "w2")
    eject(w1, clock)
    eject(w2, clock)
    transport = by_host({"w1": completion("from w1"), "w2": completion("from w2")})

    served = await forwarder_on(registry, clock, events).run(new_record(), "m", relay(transport))

    assert served.worker is w1
    assert heard.of(Panic) == [Panic("m", w1)]


async def test_an_ejected_worker_is_not_chosen_while_another_can_serve(
    registry: WorkerRegistry, clock: FakeClock, events: Events, heard: Heard
) -> None:
    w1, w2 = await add_workers(registry, "w1", "w2")
    eject(w1, clock)
    transport = by_host({"w1": completion("from w1"), "w2": completion("from w2")})

    served = await forwarder_on(registry, clock, events).run(new_record(), "m", relay(transport))

    assert served.worker is w2
    assert heard.of(Panic) == []


async def test_when_every_ejected_worker_fails_the_error_says_they_are_all_ejected(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    w1, w2 = await add_workers(registry, "w1", "w2")
    eject(w1, clock)
    eject(w2, clock)
    transport = by_host({"w1": status(503), "w2": status(503)})

    with pytest.raises(NoWorkerAvailable, match=r"every worker failed \(all workers are ejected\)"):
        await forwarder_on(registry, clock, events).run(new_record(), "m", relay(transport))


# Events and the request's record


async def test_every_attempt_is_reported_with_its_worker_and_a_retry_with_its_reason(
    registry: WorkerRegistry, clock: FakeClock, events: Events, heard: Heard
) -> None:
    w1, w2 = await add_workers(registry, "w1", "w2")
    transport = by_host({"w1": status(503), "w2": completion("ok")})

    await forwarder_on(registry, clock, events).run(new_record(), "m", relay(transport))

    assert [type(e) for e in heard.all] == [
        AttemptStarted,
        AttemptFailed,
        Retried,
        AttemptStarted,
        AttemptSucceeded,
    ]
    assert [e.worker for e in heard.of(AttemptStarted)] == [w1, w2]
    [failed] = heard.of(AttemptFailed)
    assert failed.worker is w1
    assert failed.error.reason == "http_503"
    assert heard.of(Retried) == [Retried("m", "http_503")]
    assert [e.worker for e in heard.of(AttemptSucceeded)] == [w2]


async def test_the_record_gets_the_model_the_worker_and_the_time_spent_on_workers(
    registry: WorkerRegistry, clock: FakeClock, events: Events, heard: Heard
) -> None:
    _, w2 = await add_workers(registry, "w1", "w2")
    transport = by_host(
        {
            "w1": answered_after(clock, 2, status(503)),
            "w2": answered_after(clock, 3, completion("ok")),
        }
    )
    record = new_record()

    await forwarder_on(registry, clock, events).run(record, "m", relay(transport))

    assert record.model == "m"
    assert record.worker == w2.id
    assert record.upstream_seconds == 5.0  # the failed attempt counts too
    assert [e.seconds for e in heard.of(AttemptFailed)] == [2.0]
    assert [e.seconds for e in heard.of(AttemptSucceeded)] == [3.0]
    assert w2.latency_ms == 3000.0


# A worker's slot: taken for the attempt, given back exactly once on every path


def test_a_lease_gives_its_slot_back_once_however_often_it_is_released(
    clock: FakeClock,
) -> None:
    worker = Worker(openai_spec("w1"))
    released: list[Worker] = []
    lease = Lease(worker, new_record(), clock=clock, events=Events(), on_release=released.append)
    assert worker.inflight == 1

    lease.release()
    lease.release()

    assert worker.inflight == 0
    assert released == [worker]


@pytest.mark.parametrize(
    "answer",
    [completion("ok"), status(503), CONNECT_REFUSED, status(400)],
    ids=["success", "retryable_status", "transport_failure", "client_error"],
)
async def test_the_slot_is_held_during_the_attempt_and_given_back_after_it(
    registry: WorkerRegistry, clock: FakeClock, events: Events, answer: Answer
) -> None:
    [w1] = await add_workers(registry, "w1")
    inflight_seen: list[int] = []

    async def noting_the_slot(request: SentRequest) -> FakeResponse:
        inflight_seen.append(w1.inflight)
        if isinstance(answer, TransportError):
            raise answer
        assert isinstance(answer, FakeResponse)
        return answer

    transport = by_host({"w1": noting_the_slot})

    with contextlib.suppress(UpstreamError, NoWorkerAvailable):
        await forwarder_on(registry, clock, events).run(new_record(), "m", prompt(transport))

    assert inflight_seen == [1]
    assert w1.inflight == 0


async def test_the_slot_is_given_back_when_the_attempt_raises_another_kind_of_error(
    registry: WorkerRegistry, clock: FakeClock, events: Events, heard: Heard
) -> None:
    w1, w2 = await add_workers(registry, "w1", "w2")
    tried: list[Worker] = []

    async def bad_request(lease: Lease) -> str:
        tried.append(lease.worker)
        raise BadRequest("messages must be a non-empty array")

    with pytest.raises(BadRequest):
        await forwarder_on(registry, clock, events).run(new_record(), "m", bad_request)

    assert tried == [w1]  # not retried
    assert (w1.inflight, w2.inflight) == (0, 0)
    # Started, and neither a success nor a failure of the worker.
    assert [type(e) for e in heard.all] == [AttemptStarted]


async def test_the_slot_is_given_back_when_the_request_is_cancelled_during_the_attempt(
    registry: WorkerRegistry, clock: FakeClock, events: Events, heard: Heard
) -> None:
    [w1] = await add_workers(registry, "w1")
    never = asyncio.Event()
    transport = by_host({"w1": answered_when(never, completion("never"))})

    request = asyncio.create_task(
        forwarder_on(registry, clock, events).run(new_record(), "m", relay(transport))
    )
    await settle()
    assert w1.inflight == 1

    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request

    assert w1.inflight == 0
    assert [type(e) for e in heard.all] == [AttemptStarted]


async def test_a_stream_holds_the_slot_until_relayed_to_its_end(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    response = streamed(role_chunk(), content_chunk("hi"), sse.DONE)
    w1, relayed = await stream_from(registry, clock, events, response)
    assert relayed.stream is not None

    received = [chunk async for chunk in relayed.stream]

    assert b"".join(received) == role_chunk() + content_chunk("hi") + sse.DONE
    assert w1.inflight == 0
    assert response.closed
    close(relayed)
    assert w1.inflight == 0


async def test_a_stream_the_client_closes_before_its_end_gives_the_slot_back(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    response = streamed(role_chunk(), content_chunk("hi"), sse.DONE)
    w1, relayed = await stream_from(registry, clock, events, response)
    stream = relayed.stream
    assert isinstance(stream, AsyncGenerator)

    await anext(stream)
    await stream.aclose()

    assert w1.inflight == 0
    assert response.closed
    close(relayed)
    assert w1.inflight == 0


async def test_a_stream_never_read_gives_the_slot_back_when_closed(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    response = streamed(role_chunk(), content_chunk("hi"), sse.DONE)
    w1, relayed = await stream_from(registry, clock, events, response)

    close(relayed)
    close(relayed)

    assert w1.inflight == 0
    assert response.closed


async def test_a_stream_cancelled_while_the_worker_stalls_gives_the_slot_back(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    response = streamed(role_chunk(), content_chunk("hi"), stall=True)
    w1, relayed = await stream_from(registry, clock, events, response)
    stream = relayed.stream
    assert isinstance(stream, AsyncGenerator)

    async def read_all() -> list[bytes]:
        return [chunk async for chunk in stream]

    reader = asyncio.create_task(read_all())
    await settle()
    assert response.chunks_read == 2
    reader.cancel()  # the client left while the worker said nothing more
    with pytest.raises(asyncio.CancelledError):
        await reader

    assert w1.inflight == 0
    assert response.closed
    close(relayed)
    assert w1.inflight == 0


async def test_a_stream_the_worker_breaks_gives_the_slot_back(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    response = streamed(role_chunk(), content_chunk("hi"), error=RESET)
    w1, relayed = await stream_from(registry, clock, events, response)
    assert relayed.stream is not None

    received = [chunk async for chunk in relayed.stream]

    assert received[-1].startswith(b'data: {"error":')
    assert w1.inflight == 0
    close(relayed)
    assert w1.inflight == 0
