"""The OperateGPT registry API: register, list, take offline."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from balancer.logging import get_logger, redact_url
from balancer.registry import parse_spec
from balancer.responses import json_response
from balancer.routes.body import read_json_object, required_string
from balancer.wiring import Balancer

log = get_logger("balancer.admin")


async def register(request: Request, balancer: Balancer) -> Response:
    """Add a worker, or update it when (model_name, normalised req_url_template) is known."""
    _, data = await read_json_object(request, balancer.settings.max_body_bytes)
    spec = parse_spec(data)
    worker, created = await balancer.registry.register(spec)
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


async def list_workers(request: Request, balancer: Balancer) -> Response:
    """Every worker (or those of `?model_name=`), secrets redacted."""
    registry = balancer.registry
    model = request.query_params.get("model_name")
    workers = (registry.workers_of(model) or []) if model else list(registry)
    return json_response({"success": True, "data": [w.describe() for w in workers]})


async def offline(request: Request, balancer: Balancer) -> Response:
    """Remove a worker; requests it is serving finish normally."""
    _, data = await read_json_object(request, balancer.settings.max_body_bytes)
    model = required_string(data, "model_name")
    url = required_string(data, "req_url_template")
    worker = await balancer.registry.remove(model, url)
    log.info("worker_removed", model=model, worker=worker.id, url=url)
    return json_response(
        {
            "success": True,
            "msg": f"remove llm worker(model_name={model}, url={redact_url(url)}) succeed!",
        }
    )


async def health(request: Request, balancer: Balancer) -> Response:
    """Per model and per worker: state, since when, failures, last probe, ejections."""
    registry = balancer.registry
    models = {}
    for model in registry.models():
        workers = registry.workers_of(model) or []
        counts = {"healthy": 0, "ejected": 0, "unknown": 0}
        for worker in workers:
            counts[worker.status] += 1
        models[model] = {**counts, "workers": [balancer.monitor.describe(w) for w in workers]}
    return json_response({"success": True, "data": models})
