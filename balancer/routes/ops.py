"""Liveness and readiness for orchestrators and load balancers in front of us."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from balancer.responses import json_response
from balancer.services import services

router = APIRouter(tags=["ops"])


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
    model = request.query_params.get("model")
    if model is not None:
        workers = svc.registry.workers_of(model) or []
        if not any(w.status != "ejected" for w in workers):
            return json_response(
                {"status": "unavailable", "reason": f"model {model} has no worker in service"}, 503
            )
    return json_response({"status": "ready"})
