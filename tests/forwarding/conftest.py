"""Fixtures for the request path: a registry on an in-memory store, and the events it sends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from balancer.events import Events
from balancer.registry import WorkerRegistry, open_store
from tests.forwarding.helpers import Heard


@pytest.fixture
async def registry() -> AsyncIterator[WorkerRegistry]:
    store = open_store("sqlite:///:memory:")
    await store.open()
    try:
        yield WorkerRegistry(store)
    finally:
        await store.close()


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def heard(events: Events) -> Heard:
    return Heard(events)
