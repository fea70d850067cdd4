"""The application factory: builds the parts, wires the routes, runs start-up and shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from balancer import __version__
from balancer.config import Settings
from balancer.demo import DEMO_MODEL, DemoWorkers
from balancer.errors import BalancerError
from balancer.fastpath import FastPath
from balancer.forwarding import Forwarder
from balancer.logging import get_logger
from balancer.metrics import Metrics
from balancer.middleware import RequestContextMiddleware
from balancer.registry import Registry, Store, Worker, WorkerSpec, open_store
from balancer.registry.registry import Change
from balancer.responses import handle_balancer_error, handle_http_error, handle_unexpected_error
from balancer.retry_budget import RetryBudget
from balancer.routes import admin, openai, ops, seed
from balancer.selection import Selector
from balancer.services import Services
from balancer.transport import AiohttpTransport, Transport
from probes.checks import Prober
from probes.health import HealthPolicy
from probes.monitor import HealthMonitor
from probes.scheduler import ProbeScheduler

log = get_logger("balancer.app")

STORE_REFRESH_INTERVAL = 1.0
GAUGE_REFRESH_INTERVAL = 1.0


async def refresh_gauges(metrics: Metrics) -> None:
    """Multiprocess mode: state gauges are written, not read at scrape time."""
    while True:
        metrics.refresh_gauges()
        await asyncio.sleep(GAUGE_REFRESH_INTERVAL)


async def follow_store(registry: Registry) -> None:
    """Pick up registrations made by other processes sharing the store (`--workers N`)."""
    while True:
        await asyncio.sleep(STORE_REFRESH_INTERVAL)
        try:
            if await registry.refresh():
                log.info("registry_refreshed", workers=len(registry))
        except Exception as exc:
            log.warning("store_refresh_failed", error=repr(exc))


def health_policy(settings: Settings) -> HealthPolicy:
    return HealthPolicy(
        healthy_threshold=settings.healthy_threshold,
        unhealthy_threshold=settings.unhealthy_threshold,
        passive_failures=settings.passive_failures,
        base_ejection_time=settings.base_ejection_time,
        max_ejection_time=settings.max_ejection_time,
        max_ejection_percent=settings.max_ejection_percent,
    )


def create_app(*args: Any, **kwargs: Any) -> ASGIApp:
    """The balancer as an ASGI app: the inference fast path and the request-context middleware
    in front of the FastAPI application (whose `.state.services` holds the parts)."""
    api = create_api(*args, **kwargs)
    fast = FastPath(
        api,
        {
            ("POST", "/v1/chat/completions"): openai.chat_completions,
            ("POST", "/v1/completions"): openai.completions,
            ("POST", "/v1/embeddings"): openai.embeddings,
            ("POST", "/api/v1/chat/completions"): seed.chat,
        },
    )
    return RequestContextMiddleware(fast, metrics=api.state.services.metrics)


def create_api(
    settings: Settings,
    *,
    static_workers: Sequence[WorkerSpec] = (),
    demo: bool = False,
    store: Store | None = None,
    transport: Transport | None = None,
    metrics_registry: CollectorRegistry | None = None,
) -> FastAPI:
    store = store if store is not None else open_store(settings.store)
    transport = transport if transport is not None else AiohttpTransport()
    registry = Registry(store, health_policy=health_policy(settings))
    selector = Selector(settings.strategy)
    monitor = HealthMonitor(registry)
    forwarder = Forwarder(
        registry,
        selector,
        transport,
        max_retries=settings.max_retries,
        request_timeout=settings.request_timeout,
        queue_timeout=settings.queue_timeout,
        budget=lambda: RetryBudget(
            ratio=settings.retry_budget_ratio,
            min_per_second=settings.retry_budget_min_per_second,
        ),
        observers=[monitor],
    )

    def forget_removed(change: Change, worker: Worker) -> None:
        if change == "removed":
            last = registry.workers_of(worker.model) is None
            selector.forget(worker, last_of_model=last)
            if last:
                forwarder.forget(worker.model)

    registry.subscribe(forget_removed)
    probe_client = httpx.AsyncClient(timeout=settings.probe_timeout, follow_redirects=False)
    probes = ProbeScheduler(
        registry,
        Prober(probe_client),
        monitor,
        interval=settings.probe_interval,
        jitter=settings.probe_jitter,
    )
    metrics = Metrics(metrics_registry or CollectorRegistry(auto_describe=True), registry)
    forwarder.observers.append(metrics)
    monitor.listeners.append(metrics.transition)
    monitor.probe_listeners.append(metrics.probed)
    svc = Services(
        settings, store, registry, selector, transport, forwarder, monitor, probes, metrics
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.open()
        loaded = await registry.load()
        for spec in static_workers:
            await registry.register(spec)
        demo_workers = DemoWorkers() if demo else None
        if demo_workers is not None:
            for spec in await demo_workers.start():
                await registry.register(spec)
            log.info(
                "demo_started", model=DEMO_MODEL, workers=len(registry.workers_of(DEMO_MODEL) or [])
            )
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
            workers=len(registry),
        )
        probes.start()
        background = [asyncio.create_task(follow_store(registry))]
        if metrics.multiprocess:
            background.append(asyncio.create_task(refresh_gauges(metrics)))
        try:
            yield
        finally:
            # Requests in flight have drained by now (uvicorn waits for them first).
            for task in background:
                task.cancel()
            metrics.process_exiting()
            probes.shutdown()
            await probe_client.aclose()
            if demo_workers is not None:
                await demo_workers.stop()
            await transport.close()
            await store.close()
            log.info("stopped")

    app = FastAPI(title="llm-balancer", version=__version__, lifespan=lifespan)
    app.state.services = svc
    app.add_exception_handler(BalancerError, handle_balancer_error)
    app.add_exception_handler(HTTPException, handle_http_error)
    app.add_exception_handler(Exception, handle_unexpected_error)
    for module in (admin, seed, openai, ops):
        app.include_router(module.router)
    return app
