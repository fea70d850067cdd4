"""The application: request context → the route table → FastAPI (docs, unknown paths), and the
start-up and shutdown of the parts `wiring.build` made."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from balancer import __version__
from balancer.config import Settings
from balancer.disconnects import Disconnects
from balancer.fakes.demo import DEMO_MODEL, DemoWorkers
from balancer.logging import get_logger
from balancer.metrics import Metrics
from balancer.middleware import RequestContextMiddleware
from balancer.registry import WorkerSpec
from balancer.responses import error_reply
from balancer.routing import Router, api_of_path, openapi_schema
from balancer.wiring import Balancer, build

log = get_logger("balancer.app")

LOOP_LAG_INTERVAL = 0.1
GAUGE_REFRESH_INTERVAL = 1.0


def create_app(
    settings: Settings,
    *,
    static_workers: Sequence[WorkerSpec] = (),
    demo: bool = False,
    balancer: Balancer | None = None,
) -> ASGIApp:
    """The balancer as an ASGI app; its parts from `wiring.build` unless given."""
    parts = balancer if balancer is not None else build(settings)
    disconnects = Disconnects()
    docs = FastAPI(
        title="llm-balancer",
        version=__version__,
        lifespan=_lifespan(parts, static_workers, demo, disconnects),
    )
    docs.openapi = lambda: openapi_schema()  # type: ignore[method-assign]
    docs.add_exception_handler(Exception, _not_served)
    docs.add_exception_handler(HTTPException, _not_served)
    return RequestContextMiddleware(Router(docs, parts, disconnects=disconnects))


async def _not_served(request: Request, exc: Exception) -> Response:
    """Paths outside the route table, answered by FastAPI."""
    path = request.url.path
    if isinstance(exc, HTTPException) and exc.status_code == 404:
        exc = HTTPException(404, f"no route {path}")
    return error_reply(api_of_path(path), exc)


def _lifespan(
    b: Balancer, static_workers: Sequence[WorkerSpec], demo: bool, disconnects: Disconnects
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings = b.settings
        await b.store.open()
        loaded = await b.registry.load()
        for spec in static_workers:
            await b.registry.register(spec)
        demo_workers = DemoWorkers() if demo else None
        if demo_workers is not None:
            for spec in await demo_workers.start():
                await b.registry.register(spec)
            workers = len(b.registry.workers_of(DEMO_MODEL) or [])
            log.info("demo_started", model=DEMO_MODEL, workers=workers)
        if settings.admin_token is None:
            log.warning(
                "admin_open_to_loopback",
                hint="BALANCER_ADMIN_TOKEN is unset: register/offline accept loopback "
                "clients only; set a token to manage workers remotely",
            )
        log.info(
            "started",
            version=__version__,
            host=settings.host,
            port=settings.port,
            store=settings.store,
            workers_loaded=loaded,
            workers=len(b.registry),
        )
        # This replica's share of each max_concurrency, before the first request (if the
        # store has just gone, the heartbeat loop tries again).
        with contextlib.suppress(Exception):
            await b.fleet.beat()
        b.probes.start()
        background = [
            asyncio.create_task(b.follower.run()),
            asyncio.create_task(b.fleet.run()),
            asyncio.create_task(_watch_loop_lag(b.metrics)),
        ]
        if b.metrics.multiprocess:
            background.append(asyncio.create_task(_refresh_gauges(b.metrics)))
        try:
            yield
        finally:
            # Requests in flight have drained by now (uvicorn waits for them first).
            b.follower.stop()
            for task in background:
                task.cancel()
            await b.fleet.leave()
            b.metrics.process_exiting()
            await b.drainer.close()
            await b.probes.shutdown()
            await b.probe_client.aclose()
            if demo_workers is not None:
                await demo_workers.stop()
            await b.forwarder.close()
            await disconnects.close()
            await b.transport.close()
            await b.store.close()
            log.info("stopped")

    return lifespan


async def _watch_loop_lag(metrics: Metrics) -> None:
    """How late the loop wakes a timer is how long a request waits for the balancer itself."""
    loop = asyncio.get_running_loop()
    while True:
        expected = loop.time() + LOOP_LAG_INTERVAL
        await asyncio.sleep(LOOP_LAG_INTERVAL)
        metrics.loop_lagged(max(loop.time() - expected, 0.0))


async def _refresh_gauges(metrics: Metrics) -> None:
    """Multiprocess mode: state gauges are written, not read at scrape time."""
    while True:
        metrics.refresh_gauges()
        await asyncio.sleep(GAUGE_REFRESH_INTERVAL)
