"""The whole balancer in the test's own event loop, without a socket: its real app, store
(SQLite in memory), router, forwarder, probes and metrics, in front of fake workers served
in-process (`FakeFleet`). For everything but what only real processes can show (signals,
restarts, several processes, the wire)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
from asgi_lifespan import LifespanManager
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp

from balancer.app import create_app
from balancer.config import Settings
from balancer.fakes.transport import FakeFleet
from balancer.forwarding.transport import Transport
from balancer.registry import WorkerSpec
from balancer.wiring import Balancer, build

if TYPE_CHECKING:
    import httpx2
    import openai


class InProcess:
    def __init__(
        self,
        fleet: FakeFleet,
        parts: Balancer,
        client: httpx.AsyncClient,
        app: ASGIApp | None = None,
    ) -> None:
        self.fleet = fleet
        self.parts = parts
        self.client = client
        self.app = app
        self.metrics = parts.metrics.registry
        self._sdk_clients: list[httpx2.AsyncClient] = []

    def sdk(self, api_key: str = "unused") -> openai.AsyncOpenAI:
        """The openai SDK, calling this balancer's /v1 (streams arrive whole, as in `client`)."""
        # Imported here: only the tests that drive the SDK pay for it. The SDK speaks httpx2.
        import httpx2
        import openai

        assert self.app is not None
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=self.app))
        self._sdk_clients.append(http)
        return openai.AsyncOpenAI(
            base_url="http://127.0.0.1/v1", api_key=api_key, max_retries=0, http_client=http
        )

    async def aclose(self) -> None:
        for http in self._sdk_clients:
            await http.aclose()

    def client_from(self, host: str) -> httpx.AsyncClient:
        """Another client of the same app, calling from `host` (the loopback one is `client`)."""
        assert self.app is not None
        asgi = httpx.ASGITransport(app=self.app, client=(host, 40000))
        return httpx.AsyncClient(transport=asgi, base_url="http://127.0.0.1")

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


async def eventually(condition: Callable[[], bool], within: float = 2.0) -> None:
    """Wait until `condition` holds (probes, background tasks); fail if not within `within` s."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within}s"
        await asyncio.sleep(0.005)


async def drain_while_in_flight(
    lb: InProcess, model: str, url: str, *, stream: bool = False
) -> asyncio.Task[httpx.Response]:
    """One request in flight on the model's one worker (at `url`), then that worker drained;
    returns the request, still pending."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    pending = asyncio.create_task(lb.client.post("/v1/chat/completions", json=body))
    [worker] = lb.parts.registry.workers_of(model) or []
    await eventually(lambda: worker.inflight == 1)
    target = {"model_name": model, "req_url_template": f"{url}/v1"}
    assert (await lb.client.post("/api/server/drain", json=target)).status_code == 200
    return pending


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
    *,
    static_workers: list[WorkerSpec] | None = None,
    transport: Transport | None = None,
    **settings: Any,
) -> AsyncIterator[InProcess]:
    """A started balancer with these settings (an in-memory store unless one is given).
    Requests go to the fake fleet, or to `transport` when given (e.g. a `FakeTransport`, to see
    what was sent); probes always go to the fleet."""
    fleet = FakeFleet()
    config = Settings(**{"store": "sqlite:///:memory:", **settings})
    parts = build(
        config,
        transport=transport
        if transport is not None
        else fleet.transport(config.stream_idle_timeout),
        probe_client=fleet.probe_client(),
        metrics_registry=CollectorRegistry(auto_describe=True),
    )
    app = create_app(config, balancer=parts, static_workers=static_workers or [])
    async with LifespanManager(app):
        asgi = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=asgi, base_url="http://127.0.0.1") as client:
            started = InProcess(fleet, parts, client, app)
            try:
                yield started
            finally:
                await started.aclose()
