"""The parts of one running balancer, built from its settings and connected through its events.

Every subscription is made here, in `connect`, so one screen shows who hears what.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from balancer.config import Settings
from balancer.draining import Drainer
from balancer.events import Events
from balancer.fleet import Fleet
from balancer.forwarding.affinity import ResponseOwners
from balancer.forwarding.forwarder import Forwarder
from balancer.forwarding.retry_budget import RetryBudget
from balancer.forwarding.transport import AiohttpTransport, Transport
from balancer.live import LiveStats
from balancer.metrics import Metrics
from balancer.registry import Store, WorkerRegistry, open_store
from balancer.registry.follow import StoreFollower
from balancer.selection import Selector
from probes.checks import Prober
from probes.client import AiohttpProbeClient, ProbeClient
from probes.health import HealthPolicy
from probes.monitor import HealthMonitor
from probes.scheduler import ProbeScheduler


@dataclass(slots=True)
class Balancer:
    settings: Settings
    events: Events
    store: Store
    registry: WorkerRegistry
    selector: Selector
    transport: Transport
    forwarder: Forwarder
    monitor: HealthMonitor
    probes: ProbeScheduler
    probe_client: ProbeClient
    metrics: Metrics
    responses: ResponseOwners
    """Which worker holds each stored response (Responses API `previous_response_id`)."""
    live: LiveStats
    drainer: Drainer
    follower: StoreFollower
    fleet: Fleet


def build(
    settings: Settings,
    *,
    store: Store | None = None,
    transport: Transport | None = None,
    probe_client: ProbeClient | None = None,
    metrics_registry: CollectorRegistry | None = None,
) -> Balancer:
    """A balancer's parts; real I/O (the store file, sockets) unless fakes are given."""
    events = Events()
    store = store if store is not None else open_store(settings.store)
    registry = WorkerRegistry(
        store, changed=events.registry_changed, health_policy=HealthPolicy.from_settings(settings)
    )
    selector = Selector(
        settings.strategy,
        cache_threshold=settings.cache_threshold,
        balance_abs=settings.balance_abs_threshold,
        balance_rel=settings.balance_rel_threshold,
    )
    forwarder = Forwarder(
        registry,
        selector,
        events=events,
        max_retries=settings.max_retries,
        request_timeout=settings.request_timeout,
        queue_timeout=settings.queue_timeout,
        max_queue=settings.max_queue,
        worker_timeout=settings.worker_timeout,
        max_retry_after=settings.max_retry_after,
        budget=lambda: RetryBudget(
            ratio=settings.retry_budget_ratio, min_per_second=settings.retry_budget_min_per_second
        ),
    )
    monitor = HealthMonitor(registry, events)
    if probe_client is None:
        probe_client = AiohttpProbeClient()
    probes = ProbeScheduler(
        registry,
        Prober(probe_client, timeout=settings.probe_timeout),
        monitor,
        interval=settings.probe_interval,
        jitter=settings.probe_jitter,
    )
    metrics = Metrics(metrics_registry or CollectorRegistry(auto_describe=True), registry)
    follower = StoreFollower(registry, availability=events.store_availability)
    fleet = Fleet(store, changed=events.replicas_changed)
    balancer = Balancer(
        settings=settings,
        events=events,
        store=store,
        registry=registry,
        selector=selector,
        transport=transport
        if transport is not None
        else AiohttpTransport(
            connect_timeout=settings.connect_timeout,
            stream_idle_timeout=settings.stream_idle_timeout,
            max_body_bytes=settings.max_upstream_body_bytes,
        ),
        forwarder=forwarder,
        monitor=monitor,
        probes=probes,
        probe_client=probe_client,
        metrics=metrics,
        responses=ResponseOwners(),
        live=LiveStats(),
        drainer=Drainer(registry),
        follower=follower,
        fleet=fleet,
    )
    connect(balancer)
    return balancer


def connect(b: Balancer) -> None:
    """Who hears what. Within a signal, receivers run in the order connected: selection and
    health judge an outcome before metrics count what they decided."""
    e = b.events
    e.attempt_succeeded.connect(b.selector.on_attempt_succeeded)
    e.attempt_succeeded.connect(b.monitor.on_attempt_succeeded)
    e.attempt_succeeded.connect(b.metrics.on_attempt_succeeded)
    e.attempt_succeeded.connect(b.live.on_attempt_succeeded)
    e.attempt_failed.connect(b.selector.on_attempt_failed)
    e.attempt_failed.connect(b.monitor.on_attempt_failed)
    e.attempt_failed.connect(b.metrics.on_attempt_failed)
    e.attempt_failed.connect(b.live.on_attempt_failed)
    e.retried.connect(b.metrics.on_retried)
    e.queued.connect(b.metrics.on_queued)
    e.panic.connect(b.metrics.on_panic)
    e.probed.connect(b.metrics.on_probed)
    e.health_changed.connect(b.probes.on_health_changed)
    e.health_changed.connect(b.metrics.on_health_changed)
    e.registry_changed.connect(b.selector.on_registry_changed)
    e.registry_changed.connect(b.forwarder.on_registry_changed)
    e.registry_changed.connect(b.probes.on_registry_changed)
    e.registry_changed.connect(b.metrics.on_registry_changed)
    e.registry_changed.connect(b.live.on_registry_changed)
    e.request_finished.connect(b.metrics.on_request_finished)
    e.request_finished.connect(b.live.on_request_finished)
    e.store_availability.connect(b.metrics.on_store_availability)
    e.replicas_changed.connect(b.forwarder.on_replicas_changed)
    e.replicas_changed.connect(b.metrics.on_replicas_changed)
