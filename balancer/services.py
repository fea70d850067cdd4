"""The parts one running balancer is made of, built once by the app factory."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from balancer.config import Settings
from balancer.forwarding import Forwarder
from balancer.metrics import Metrics
from balancer.registry import Registry, Store
from balancer.selection import Selector
from balancer.transport import Transport
from probes.monitor import HealthMonitor
from probes.scheduler import ProbeScheduler


@dataclass(slots=True)
class Services:
    settings: Settings
    store: Store
    registry: Registry
    selector: Selector
    transport: Transport
    forwarder: Forwarder
    monitor: HealthMonitor
    probes: ProbeScheduler
    metrics: Metrics


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
