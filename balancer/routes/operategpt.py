"""The OperateGPT inference endpoint: {input, model_name} in, {success, msg, result} out."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from balancer.auth import require_api_key
from balancer.events import RequestRecord
from balancer.forwarding.lease import Lease
from balancer.forwarding.prompt import complete_text
from balancer.registry import Worker
from balancer.responses import json_response, served_headers
from balancer.routes.body import optional_number, read_json_object, required_string
from balancer.routes.targeting import note_routing, serving
from balancer.wiring import Balancer

OPERATEGPT_PATH = "/api/v1/chat/completions"


def _chats(worker: Worker) -> bool:
    return worker.serves(OPERATEGPT_PATH) or worker.serves("/v1/chat/completions")


async def chat(request: Request, balancer: Balancer, record: RequestRecord) -> Response:
    """A prompt answered by a worker of the model, template or OpenAI-compatible."""
    require_api_key(request, balancer.settings)
    _, data = await read_json_object(request, balancer.settings.max_body_bytes)
    prompt = required_string(data, "input")
    model = required_string(data, "model_name")
    temperature = optional_number(data, "temperature")
    note_routing(balancer, request, record, model, data, prompt=lambda: prompt)

    async def attempt(lease: Lease) -> str:
        return await complete_text(balancer.transport, lease, prompt, temperature)

    # A prompt is a chat: not for a worker that declares only, say, images.
    workers = balancer.forwarder.workers_of(model)
    accept = serving(model, workers, OPERATEGPT_PATH, _chats)
    served = await balancer.forwarder.run(record, model, attempt, accept=accept)
    return json_response(
        {"success": True, "msg": "execute succeed", "result": served.value},
        headers=served_headers(served.worker.id, served.attempts),
    )
