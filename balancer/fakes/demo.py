"""`balancer serve --demo`: three fake workers in the balancer's own process, one model."""

from __future__ import annotations

import asyncio

import uvicorn

from balancer.fakes.worker import Behaviour, FakeWorker
from balancer.registry import WorkerSpec
from balancer.server import EmbeddedServer, bind_loopback

DEMO_MODEL = "demo"
DEMO_BEHAVIOURS = (
    Behaviour(name="fast", latency=0.02, chunks=16, chunk_delay=0.02),
    Behaviour(name="slow", latency=0.4, chunks=16, chunk_delay=0.08),
    Behaviour(name="flaky", latency=0.05, chunks=16, chunk_delay=0.03, fail_rate=0.25),
)


class DemoWorkers:
    def __init__(self) -> None:
        self._servers: list[tuple[EmbeddedServer, asyncio.Task[None]]] = []

    async def start(self) -> list[WorkerSpec]:
        """Start the workers on free loopback ports; return their registrations."""
        specs = []
        for behaviour in DEMO_BEHAVIOURS:
            sock = bind_loopback()
            port = sock.getsockname()[1]
            config = uvicorn.Config(
                FakeWorker(behaviour),
                lifespan="off",
                access_log=False,
                # The balancer's logging stays as it is: no levels, no handlers of uvicorn's.
                log_config=None,
                log_level=None,
                http="httptools",
            )
            server = EmbeddedServer(config)
            task = asyncio.create_task(server.serve(sockets=[sock]))
            self._servers.append((server, task))
            specs.append(
                WorkerSpec(
                    model_name=DEMO_MODEL,
                    api="openai",
                    owner=f"demo-{behaviour.name}",
                    req_url_template=f"http://127.0.0.1:{port}/v1",
                    upstream_model="fake-model",
                    timeout=10.0,
                )
            )
        # uvicorn exposes only a flag for "started", so poll it briefly.
        while not all(server.started for server, _ in self._servers):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return specs

    async def stop(self) -> None:
        for server, _ in self._servers:
            server.should_exit = True
        await asyncio.gather(*(task for _, task in self._servers), return_exceptions=True)
