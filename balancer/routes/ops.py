"""For orchestrators, load balancers in front of us and Prometheus: liveness, readiness,
metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from balancer.responses import json_response
from balancer.wiring import Balancer


async def metrics(request: Request, balancer: Balancer) -> Response:
    """Prometheus exposition of every balancer metric."""
    return Response(balancer.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request, balancer: Balancer) -> Response:
    """Liveness: 200 while the process serves."""
    return json_response({"status": "ok"})


async def readyz(request: Request, balancer: Balancer) -> Response:
    """Readiness: the prober runs (and `?model=` has a healthy worker). A store that cannot be
    reached is reported (`"store": "unavailable"`) but keeps the replica ready: it serves the
    registry as last read, and replicas all failing readiness together over one Redis outage
    would take the whole service down. It waits on nothing: the store's state is the follower's.
    """
    follower = balancer.follower
    if not balancer.probes.running:
        return json_response({"status": "unavailable", "reason": "probe scheduler stopped"}, 503)
    model = request.query_params.get("model")
    if model is not None:
        workers = balancer.registry.workers_of(model)
        if not workers:
            return json_response(
                {"status": "unavailable", "reason": f"model {model} has no registered worker"}, 503
            )
        if not any(w.status == "healthy" and not w.draining for w in workers):
            return json_response(
                {
                    "status": "unavailable",
                    "reason": f"model {model} has no healthy worker (draining ones aside)",
                },
                503,
            )
    if not follower.up:
        return json_response(
            {
                "status": "ready",
                "store": "unavailable",
                "reason": f"store: {follower.error}; serving the registry as last read, "
                "admin writes answer 503 until it is back",
            }
        )
    return json_response({"status": "ready"})
