"""The OperateGPT registry API: register, list, take offline; and ours: drain, change a
weight."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from balancer.errors import BadRequest, NotFound, StoreUnavailable
from balancer.logging import get_logger, redact_url
from balancer.registry import Worker, parse_spec
from balancer.responses import json_response
from balancer.routes.body import read_json_object, required_string
from balancer.wiring import Balancer

log = get_logger("balancer.admin")


async def register(request: Request, balancer: Balancer) -> Response:
    """Add a worker, or update it when (model_name, normalised req_url_template) is known; a
    worker being drained is taken back into service."""
    _, data = await read_json_object(request, balancer.settings.max_body_bytes)
    spec = parse_spec(data)
    worker, created = await balancer.registry.register(spec)
    balancer.drainer.cancel(worker)
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


async def drain(request: Request, balancer: Balancer) -> Response:
    """Stop sending the worker new requests, let those in flight finish, then remove it."""
    _, data = await read_json_object(request, balancer.settings.max_body_bytes)
    worker = await _named_worker(balancer, data)
    started = balancer.drainer.drain(worker)
    url = redact_url(worker.spec.req_url_template)
    return json_response(
        {
            "success": True,
            "msg": f"{'draining' if started else 'already draining'} llm worker"
            f"(model_name={worker.model}, url={url}): it is removed once its "
            f"{worker.inflight} request(s) in flight are done",
            "id": worker.id,
            "inflight": worker.inflight,
        }
    )


async def set_weight(request: Request, balancer: Balancer) -> Response:
    """Change a worker's weight; kept in the store, as a registration is."""
    _, data = await read_json_object(request, balancer.settings.max_body_bytes)
    if "weight" not in data:
        raise BadRequest("weight is required: a number above 0")
    worker = await _named_worker(balancer, data)
    spec = parse_spec({**worker.spec.model_dump(exclude_unset=True), "weight": data["weight"]})
    worker, _ = await balancer.registry.register(spec)
    log.info("worker_weight_changed", model=worker.model, worker=worker.id, weight=spec.weight)
    return json_response(
        {
            "success": True,
            "msg": f"weight of llm worker(model_name={worker.model}, "
            f"url={redact_url(spec.req_url_template)}) is now {spec.weight:g}",
            "id": worker.id,
            "weight": spec.weight,
        }
    )


async def _named_worker(balancer: Balancer, data: dict[str, Any]) -> Worker:
    """The worker a body's model_name and req_url_template name, or a 404."""
    model = required_string(data, "model_name")
    url = required_string(data, "req_url_template")
    try:
        worker = await balancer.registry.find(model, url)
    except Exception as exc:
        raise StoreUnavailable("could not read the store", model=model) from exc
    if worker is None:
        raise NotFound(f"no llm worker of model {model} at {redact_url(url)}")
    return worker
