"""The OperateGPT registry API: register, list, take offline."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from balancer.auth import require_admin
from balancer.logging import get_logger
from balancer.registry import parse_spec
from balancer.responses import json_response
from balancer.routes.common import read_json_object, required_string
from balancer.services import services

router = APIRouter(prefix="/api/server", tags=["registry"])
log = get_logger("balancer.admin")


@router.post("/register")
async def register(request: Request) -> Response:
    """Add a worker, or update it when (model_name, normalised req_url_template) is known."""
    svc = services(request)
    require_admin(request, svc.settings)
    _, data = await read_json_object(request)
    spec = parse_spec(data)
    worker, created = await svc.registry.register(spec)
    log.info(
        "worker_registered" if created else "worker_updated",
        model=worker.model,
        worker=worker.id,
        url=spec.req_url_template,
        api=spec.api,
        header=spec.header,
    )
    return json_response(
        {
            "success": True,
            "msg": f"register LLM {worker.model} succeed!",
            "id": worker.id,
            "created": created,
        }
    )


@router.get("/workers")
async def list_workers(request: Request) -> Response:
    registry = services(request).registry
    model = request.query_params.get("model_name")
    workers = (registry.workers_of(model) or []) if model else list(registry)
    return json_response({"success": True, "data": [w.describe() for w in workers]})


@router.post("/offline")
async def offline(request: Request) -> Response:
    """Remove a worker; requests it is serving finish normally."""
    svc = services(request)
    require_admin(request, svc.settings)
    _, data = await read_json_object(request)
    model = required_string(data, "model_name")
    url = required_string(data, "req_url_template")
    worker = await svc.registry.remove(model, url)
    log.info("worker_removed", model=model, worker=worker.id, url=url)
    return json_response(
        {
            "success": True,
            "msg": f"remove llm worker(model_name={model}, url={url}) succeed!",
        }
    )
