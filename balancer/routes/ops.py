"""Liveness and readiness for orchestrators and load balancers in front of us."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from balancer.responses import json_response
from balancer.services import services

router = APIRouter(tags=["ops"])


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus exposition of every balancer metric."""
    return Response(services(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    svc = services(request)
    try:
        await svc.store.ping()
    except Exception as exc:
        return json_response({"status": "unavailable", "reason": f"store: {exc!r}"}, 503)
    if not svc.probes.running:
        return json_response({"status": "unavailable", "reason": "probe scheduler stopped"}, 503)
    model = request.query_params.get("model")
    if model is not None:
        workers = svc.registry.workers_of(model)
        if not workers:
            return json_response(
                {"status": "unavailable", "reason": f"model {model} has no registered worker"}, 503
            )
        if not any(w.status == "healthy" for w in workers):
            return json_response(
                {"status": "unavailable", "reason": f"model {model} has no healthy worker"}, 503
            )
    return json_response({"status": "ready"})


@router.get("/api/server/health")
async def health(request: Request) -> Response:
    """Per model and per worker: state, since when, failures, last probe, ejections."""
    svc = services(request)
    models = {}
    for model in svc.registry.models():
        workers = svc.registry.workers_of(model) or []
        counts = {"healthy": 0, "ejected": 0, "unknown": 0}
        for worker in workers:
            counts[worker.status] += 1
        models[model] = {**counts, "workers": [svc.monitor.describe(w) for w in workers]}
    return json_response({"success": True, "data": models})
