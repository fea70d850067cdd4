"""The OperateGPT inference endpoint: {input, model_name} in, {success, msg, result} out."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from balancer.auth import require_api_key
from balancer.events import RequestRecord
from balancer.forwarding.lease import Lease
from balancer.forwarding.prompt import complete_text
from balancer.responses import json_response, served_headers
from balancer.routes.body import optional_number, read_json_object, required_string
from balancer.selection.sessions import session_of
from balancer.wiring import Balancer


async def chat(request: Request, balancer: Balancer, record: RequestRecord) -> Response:
    """A prompt answered by a worker of the model, template or OpenAI-compatible."""
    require_api_key(request, balancer.settings)
    _, data = await read_json_object(request, balancer.settings.max_body_bytes)
    prompt = required_string(data, "input")
    model = required_string(data, "model_name")
    temperature = optional_number(data, "temperature")
    if balancer.selector.routes_on_prompts(model, balancer.registry.options(model).strategy):
        record.routing_key = prompt
    record.session = session_of(request.headers.get("x-session-id"), data)

    async def attempt(lease: Lease) -> str:
        return await complete_text(balancer.transport, lease, prompt, temperature)

    served = await balancer.forwarder.run(record, model, attempt)
    return json_response(
        {"success": True, "msg": "execute succeed", "result": served.value},
        headers=served_headers(served.worker.id, served.attempts),
    )
