"""The capacity queue: a bounded line per model, first come first served; a freed slot wakes
one waiter, and no wake-up is lost to a waiter that leaves or cannot use it. On the queue
itself, then through the forwarder on a fake transport and a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from balancer.errors import NoWorkerAvailable
from balancer.events import Events, Queued
from balancer.fakes.transport import FakeResponse, FakeTransport, SentRequest
from balancer.forwarding.capacity import CapacityQueue, Place
from balancer.forwarding.forwarder import Forwarder, Served
from balancer.forwarding.lease import Lease
from balancer.forwarding.relay import Relayed, relay_openai
from balancer.forwarding.retry_budget import RetryBudget
from balancer.registry import Worker, WorkerRegistry
from balancer.selection import Selector
from tests.conftest import FakeClock
from tests.forwarding.helpers import Heard, add_workers, by_host, completion, new_record, status

pytestmark = pytest.mark.anyio

CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'


async def settle() -> None:
    """Let every task that can run, run."""
    for _ in range(20):
        await asyncio.sleep(0)


def waiting(place: Place, woken: list[str], name: str) -> asyncio.Task[Worker | None]:
    """`place` waiting for a slot; its name goes to `woken` when it gets one."""

    async def wait() -> Worker | None:
        freed = await place.wait(30)
        if freed is not None:
            woken.append(name)
        return freed

    return asyncio.create_task(wait())


def joined(queue: CapacityQueue, model: str = "m") -> Place:
    place = queue.join(model)
    assert place is not None
    return place


# The queue


async def test_a_freed_slot_wakes_the_first_waiter_and_only_it(registry: WorkerRegistry) -> None:
    [w1] = await add_workers(registry, "w1")
    queue = CapacityQueue()
    woken: list[str] = []
    tasks = [waiting(joined(queue), woken, name) for name in ("a", "b", "c")]
    await settle()

    queue.released(w1)
    await settle()

    assert woken == ["a"]
    assert tasks[0].result() is w1
    assert not tasks[1].done() and not tasks[2].done()
    for task in tasks[1:]:
        task.cancel()
    await asyncio.gather(*tasks[1:], return_exceptions=True)


async def test_waiters_are_woken_first_come_first_served(registry: WorkerRegistry) -> None:
    [w1] = await add_workers(registry, "w1")
    queue = CapacityQueue()
    woken: list[str] = []
    tasks = [waiting(joined(queue), woken, name) for name in ("a", "b", "c", "d")]
    await settle()

    # Released before any woken waiter could run: each release goes to the next one waiting.
    for _ in range(4):
        queue.released(w1)
    await asyncio.gather(*tasks)

    assert woken == ["a", "b", "c", "d"]


async def test_a_release_of_another_models_slot_wakes_nobody(registry: WorkerRegistry) -> None:
    [other] = await add_workers(registry, "w1", model="other")
    queue = CapacityQueue()
    woken: list[str] = []
    task = waiting(joined(queue, "m"), woken, "a")
    await settle()
    queue.released(other)
    await settle()
    assert woken == []
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_the_line_is_bounded_per_model() -> None:
    queue = CapacityQueue(max_waiting=2)
    first, _ = joined(queue, "m"), joined(queue, "m")
    assert queue.join("m") is None
    assert queue.join("other") is not None  # each model has a line of its own
    first.leave()
    assert queue.join("m") is not None
    assert CapacityQueue(max_waiting=0).join("m") is None


async def test_a_waiter_whose_client_left_after_its_wake_up_passes_it_on(
    registry: WorkerRegistry,
) -> None:
    [w1] = await add_workers(registry, "w1")
    queue = CapacityQueue()
    woken: list[str] = []
    first, second = waiting(joined(queue), woken, "a"), waiting(joined(queue), woken, "b")
    await settle()

    queue.released(w1)  # for the first waiter...
    first.cancel()  # ...whose client leaves before it could run
    await settle()

    assert first.cancelled()
    assert woken == ["b"]
    assert second.result() is w1


async def test_a_waiter_whose_client_left_takes_no_wake_up_with_it(
    registry: WorkerRegistry,
) -> None:
    [w1] = await add_workers(registry, "w1")
    queue = CapacityQueue()
    woken: list[str] = []
    first_place = joined(queue)
    first, second = waiting(first_place, woken, "a"), waiting(joined(queue), woken, "b")
    await settle()
    first.cancel()
    await settle()
    first_place.leave()

    queue.released(w1)
    await settle()

    assert woken == ["b"]
    assert second.done()


async def test_a_wait_that_times_out_returns_none(registry: WorkerRegistry) -> None:
    queue = CapacityQueue()
    place = joined(queue)
    assert await place.wait(0.001) is None
    place.leave()
    assert joined(queue) is not None


async def test_a_waiter_that_cannot_use_the_freed_slot_wakes_the_next_one_behind_it(
    registry: WorkerRegistry,
) -> None:
    [w1] = await add_workers(registry, "w1")
    queue = CapacityQueue()
    woken: list[str] = []
    places = [joined(queue) for _ in range(3)]
    tasks = [waiting(place, woken, name) for place, name in zip(places, "abc", strict=True)]
    await settle()
    queue.released(w1)
    await settle()
    assert woken == ["a"]

    places[0].pass_on(w1)
    await settle()

    assert woken == ["a", "b"]
    assert tasks[1].result() is w1 and not tasks[2].done()
    tasks[2].cancel()
    await asyncio.gather(tasks[2], return_exceptions=True)


# Through the forwarder


def forwarder_on(
    registry: WorkerRegistry, clock: FakeClock, events: Events, **settings: Any
) -> Forwarder:
    selector = Selector("round_robin", clock=clock)
    return Forwarder(registry, selector, events=events, clock=clock, **settings)


def relay(transport: FakeTransport) -> Callable[[Lease], Awaitable[Relayed]]:
    async def attempt(lease: Lease) -> Relayed:
        return await relay_openai(transport, lease, "/chat/completions", CHAT, stream=False)

    return attempt


def gated(gates: list[asyncio.Event]) -> Callable[[SentRequest], Awaitable[FakeResponse]]:
    """A worker busy with its n-th request until the n-th gate opens (it takes no more)."""
    order: Iterator[asyncio.Event] = iter(gates)

    async def busy(request: SentRequest) -> FakeResponse:
        await next(order).wait()
        return completion("ok")

    return busy


def request(
    forwarder: Forwarder,
    transport: FakeTransport,
    accept: Callable[[Worker], bool] | None = None,
) -> asyncio.Task[Served[Relayed]]:
    return asyncio.create_task(forwarder.run(new_record(), "m", relay(transport), accept=accept))


async def test_a_full_line_is_a_503_with_retry_after_naming_the_model(
    registry: WorkerRegistry, clock: FakeClock, events: Events, heard: Heard
) -> None:
    [w1] = await add_workers(registry, "w1", max_concurrency=1)
    gates = [asyncio.Event(), asyncio.Event()]
    transport = by_host({"w1": gated(gates)})
    forwarder = forwarder_on(registry, clock, events, max_queue=1)
    served = request(forwarder, transport)
    await settle()
    waiting = request(forwarder, transport)
    await settle()

    with pytest.raises(NoWorkerAvailable) as raised:
        await forwarder.run(new_record(), "m", relay(transport))

    assert raised.value.status_code == 503
    assert raised.value.retry_after == 1.0
    assert raised.value.message == (
        "model m: every worker is at its max_concurrency and the queue is full "
        "(1 waiting, BALANCER_MAX_QUEUE)"
    )
    assert heard.of(Queued) == []  # refused at once: it never waited
    for gate in gates:
        gate.set()
    assert [(await served).worker, (await waiting).worker] == [w1, w1]


async def test_a_request_refused_by_a_full_line_goes_to_the_models_fallbacks(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    await add_workers(registry, "w1", max_concurrency=1, fallbacks=["f"])
    [spare] = await add_workers(registry, "spare", model="f")
    gate = asyncio.Event()
    transport = by_host({"w1": gated([gate]), "spare": completion("spare")})
    forwarder = forwarder_on(registry, clock, events, max_queue=0)
    busy = request(forwarder, transport)
    await settle()

    served = await forwarder.run(new_record(), "m", relay(transport))

    assert served.worker is spare
    gate.set()
    await busy


async def test_a_request_beaten_to_its_slot_waits_again_first_in_line_and_is_observed_once(
    registry: WorkerRegistry, clock: FakeClock, events: Events, heard: Heard
) -> None:
    await add_workers(registry, "w1", max_concurrency=1)
    gates = [asyncio.Event() for _ in range(4)]
    transport = by_host({"w1": gated(gates)})
    forwarder = forwarder_on(registry, clock, events)
    first = request(forwarder, transport)
    await settle()
    second, third = request(forwarder, transport), request(forwarder, transport)
    await settle()
    assert len(transport.sent) == 1

    clock.advance(1)
    gates[0].set()  # the first ends and frees its slot, waking the second; but a request...
    newcomer = request(forwarder, transport)  # ...that arrives in that moment runs before it
    await settle()
    await first
    assert len(transport.sent) == 2  # the newcomer's: the second was beaten to the slot
    assert heard.of(Queued) == []  # ...and waits on, not observed yet

    clock.advance(2)
    gates[1].set()
    await newcomer
    await settle()
    assert len(transport.sent) == 3
    assert not third.done()  # the second kept its place ahead of the third
    gates[2].set()
    await second
    gates[3].set()
    await third

    assert heard.of(Queued) == [Queued("m", 3.0), Queued("m", 3.0)]


async def test_a_request_that_cannot_use_the_freed_worker_passes_the_wake_up_on(
    registry: WorkerRegistry, clock: FakeClock, events: Events, heard: Heard
) -> None:
    w1, w2 = await add_workers(registry, "w1", "w2", max_concurrency=1)
    gates = {"w1": asyncio.Event(), "w2": asyncio.Event()}
    at_once = asyncio.Event()
    at_once.set()
    transport = by_host({"w1": gated([gates["w1"]]), "w2": gated([gates["w2"], at_once])})
    forwarder = forwarder_on(registry, clock, events)
    holders = [request(forwarder, transport), request(forwarder, transport)]
    await settle()
    assert (w1.inflight, w2.inflight) == (1, 1)
    only_w1 = request(forwarder, transport, accept=lambda worker: worker is w1)
    await settle()
    anyone = request(forwarder, transport)
    await settle()

    gates["w2"].set()  # w2 frees up: first in line is a request only w1 can serve
    await settle()

    assert anyone.done() and anyone.result().worker is w2
    assert not only_w1.done()
    only_w1.cancel()
    gates["w1"].set()
    await asyncio.gather(*holders)
    await asyncio.gather(only_w1, return_exceptions=True)
    assert (w1.inflight, w2.inflight) == (0, 0)
    assert len(heard.of(Queued)) == 2


async def test_a_request_whose_client_left_after_its_wake_up_passes_it_on(
    registry: WorkerRegistry, clock: FakeClock, events: Events, heard: Heard
) -> None:
    [w1] = await add_workers(registry, "w1", max_concurrency=1)
    gates = [asyncio.Event(), asyncio.Event()]
    transport = by_host({"w1": gated(gates)})
    forwarder = forwarder_on(registry, clock, events)
    first = request(forwarder, transport)
    await settle()
    leaving, staying = request(forwarder, transport), request(forwarder, transport)
    await settle()

    gates[0].set()  # the first ends, its freed slot wakes `leaving`, whose client leaves...
    asyncio.get_running_loop().call_soon(leaving.cancel)  # ...before it could run
    await first
    await settle()
    gates[1].set()

    assert (await staying).worker is w1
    assert leaving.cancelled()
    assert len(heard.of(Queued)) == 2  # each observed once, the one that left included
    assert w1.inflight == 0


async def test_a_woken_request_out_of_retry_budget_leaves_its_slot_to_the_next_in_line(
    registry: WorkerRegistry, clock: FakeClock, events: Events, heard: Heard
) -> None:
    _, w2 = await add_workers(registry, "w1", "w2", max_concurrency=1)
    gate, after = asyncio.Event(), asyncio.Event()
    transport = by_host({"w1": status(500), "w2": gated([gate, after])})

    def no_retries() -> RetryBudget:
        return RetryBudget(ratio=0.0, min_per_second=0.0)

    forwarder = forwarder_on(registry, clock, events, budget=no_retries)
    holder = request(forwarder, transport, accept=lambda worker: worker is w2)
    await settle()
    # Fails on w1, then would retry on w2, busy: it waits (though its budget is spent).
    retrying = request(forwarder, transport)
    await settle()
    behind = request(forwarder, transport, accept=lambda worker: worker is w2)
    await settle()

    gate.set()
    await holder
    with pytest.raises(NoWorkerAvailable, match="retry budget exhausted"):
        await retrying
    await settle()
    after.set()

    assert (await behind).worker is w2
    assert w2.inflight == 0


async def test_a_worker_registered_while_requests_wait_serves_them_at_once(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    """New capacity wakes the line: nobody waits for an old slot while a new one is idle."""
    await add_workers(registry, "w1", max_concurrency=1)
    gate = asyncio.Event()
    answers: dict[str, Any] = {"w1": gated([gate]), "w2": completion("from w2")}
    transport = by_host(answers)
    forwarder = forwarder_on(registry, clock, events)
    registry.changed.connect(forwarder.on_registry_changed)
    busy = request(forwarder, transport)
    await settle()
    queued = request(forwarder, transport)
    await settle()
    assert not queued.done()

    await add_workers(registry, "w2")
    served = await asyncio.wait_for(queued, 1)

    assert served.worker.spec.req_url_template == "http://w2/v1"
    gate.set()
    await busy
