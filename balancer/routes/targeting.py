"""Which of a model's workers a request may go to, and what selection may route it on: the same
for every inference route."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from starlette.requests import Request

from balancer.errors import EndpointNotServed
from balancer.events import RequestRecord
from balancer.registry import Worker
from balancer.selection.sessions import session_of
from balancer.wiring import Balancer

Accept = Callable[[Worker], bool]
"""Whether a worker may serve the request (the forwarder's `accept`)."""


def both(accept: Accept | None, also: Accept) -> Accept:
    """`also`, and `accept` too when there is one."""
    if accept is None:
        return also
    return lambda worker: also(worker) and accept(worker)


def serving(
    model: str,
    workers: Sequence[Worker],
    path: str,
    serves: Accept,
    accept: Accept | None = None,
) -> Accept | None:
    """`accept`, narrowed to the workers that `serves` the client's `path` when any of the
    model's workers declares its `endpoints` (none does: every worker serves every path)."""
    if all(worker.spec.endpoints is None for worker in workers):
        return accept
    accept = both(accept, serves)
    if not any(accept(worker) for worker in workers):
        raise EndpointNotServed(model, path)
    return accept


def note_routing(
    balancer: Balancer,
    request: Request,
    record: RequestRecord,
    model: str,
    data: dict[str, Any],
    prompt: Callable[[], str | None],
) -> None:
    """What selection may route the request on: its `prompt`, read only for a policy that
    wants it (`cache_aware`), and its session."""
    if balancer.selector.routes_on_prompts(model, balancer.registry.options(model).strategy):
        record.routing_key = prompt()
    record.session = session_of(request.headers.get("x-session-id"), data)
