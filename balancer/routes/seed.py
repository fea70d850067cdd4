"""The OperateGPT inference endpoint: {input, model_name} in, {success, msg, result} out."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from balancer.auth import require_api_key
from balancer.calls import complete_text
from balancer.forwarding import Lease
from balancer.middleware import request_id_var
from balancer.responses import json_response
from balancer.routes.common import (
    optional_number,
    read_json_object,
    required_string,
    served_headers,
)
from balancer.services import services

router = APIRouter(tags=["operategpt"])


@router.post("/api/v1/chat/completions")
async def chat(request: Request) -> Response:
    svc = services(request)
    require_api_key(request, svc.settings)
    _, data = await read_json_object(request)
    prompt = required_string(data, "input")
    model = required_string(data, "model_name")
    temperature = optional_number(data, "temperature")
    request_id = request_id_var.get()

    async def attempt(lease: Lease) -> str:
        return await complete_text(svc.transport, lease.worker, prompt, temperature, request_id)

    served = await svc.forwarder.run(model, attempt)
    return json_response(
        {"success": True, "msg": "execute succeed", "result": served.value},
        headers=served_headers(served.worker.id, served.attempts),
    )
