"""The whole balancer in the test's own event loop, without a socket: its real app, store
(SQLite in memory), router, forwarder, probes and metrics, in front of fake workers served
in-process (`FakeFleet`). For everything but what only real processes can show (signals,
restarts, several processes, the wire)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from prometheus_client import CollectorRegistry

from balancer.app import create_app
from balancer.config import Settings
from balancer.fakes.transport import FakeFleet
from balancer.registry import WorkerSpec
from balancer.wiring import Balancer, build


class InProcess:
    def __init__(self, fleet: FakeFleet, parts: Balancer, client: httpx.AsyncClient) -> None:
        self.fleet = fleet
        self.parts = parts
        self.client = client
        self.metrics = parts.metrics.registry

    def worker(self, name: str, **behaviour: Any) -> str:
        """A fake worker; returns its base URL (http://<name>)."""
        return self.fleet.add(name, **behaviour)

    async def register(self, **fields: Any) -> dict[str, Any]:
        reply = await self.client.post("/api/server/register", json=fields)
        assert reply.status_code == 200, reply.text
        result: dict[str, Any] = reply.json()
        return result

    async def register_openai(self, model: str, url: str, **fields: Any) -> str:
        """Register the fake worker at `url` as an OpenAI worker of `model`; returns its id."""
        data = {"model_name": model, "api": "openai", "req_url_template": f"{url}/v1"}
        reply = await self.register(**data, **fields)
        return str(reply["id"])

    async def register_template(self, model: str, url: str, **fields: Any) -> str:
        """Register the fake worker at `url` the OperateGPT way (a body template)."""
        reply = await self.register(**template_registration(model, url), **fields)
        return str(reply["id"])

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.get_sample_value(name, labels)


def template_registration(model: str, url: str) -> dict[str, Any]:
    """The OperateGPT seed's own registration shape, pointed at a fake worker."""
    return {
        "model_name": model,
        "body": {"input": "{USER_PROMPT}", "model_name": "{MODEL_NAME}"},
        "req_url_template": f"{url}/api/generate",
        "owner": "operategpt",
        "response_extract": "data.items[].attributes.answer",
    }


@asynccontextmanager
async def in_process(
    *, static_workers: list[WorkerSpec] | None = None, **settings: Any
) -> AsyncIterator[InProcess]:
    """A started balancer with these settings (an in-memory store unless one is given)."""
    fleet = FakeFleet()
    config = Settings(**{"store": "sqlite:///:memory:", **settings})
    parts = build(
        config,
        transport=fleet.transport(),
        probe_client=fleet.probe_client(config.probe_timeout),
        metrics_registry=CollectorRegistry(auto_describe=True),
    )
    app = create_app(config, balancer=parts, static_workers=static_workers or [])
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://balancer") as client:
            yield InProcess(fleet, parts, client)
