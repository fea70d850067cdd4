"""/openapi.json describes every route of the table: its request body, query parameters and
answers (`balancer/schemas.py`), for readers, client generators and fuzzers. The endpoints
still read the raw body themselves."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from balancer.registry import WorkerSpec
from balancer.routing import ROUTES, InferenceRoute, Route, openapi_schema
from balancer.schemas import (
    OPERATIONS,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    OfflineRequest,
    OperateGPTRequest,
)
from tests.inprocess import InProcess, template_registration

pytestmark = pytest.mark.anyio


@pytest.fixture
async def document(lb: InProcess) -> dict[str, Any]:
    reply = await lb.client.get("/openapi.json")
    assert reply.status_code == 200
    served: dict[str, Any] = reply.json()
    return served


def test_every_route_of_the_table_is_described_and_nothing_else() -> None:
    assert set(OPERATIONS) == {(route.method, route.path) for route in ROUTES}


BODYLESS_POSTS = {("POST", "/v1/responses/{response_id}")}
"""POSTs that take no body: `POST /v1/responses/{id}/cancel`."""


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_every_post_documents_its_body_and_no_get_has_one(
    document: dict[str, Any], route: Route | InferenceRoute
) -> None:
    operation = document["paths"][route.path][route.method.lower()]
    body = OPERATIONS[(route.method, route.path)].body
    if route.method in ("GET", "DELETE") or (route.method, route.path) in BODYLESS_POSTS:
        assert "requestBody" not in operation
        return
    assert body is not None
    media_type = (
        "multipart/form-data" if OPERATIONS[(route.method, route.path)].form else "application/json"
    )
    assert operation["requestBody"] == {
        "content": {media_type: {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}}},
        "required": True,
    }
    assert "200" in operation["responses"]


async def test_the_registration_body_is_the_worker_spec(document: dict[str, Any]) -> None:
    schema = document["components"]["schemas"]["WorkerSpec"]
    assert schema["required"] == ["model_name", "req_url_template"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(WorkerSpec.model_fields)


async def test_errors_are_documented_in_each_routes_envelope(document: dict[str, Any]) -> None:
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    operategpt = document["paths"]["/api/v1/chat/completions"]["post"]["responses"]
    register = document["paths"]["/api/server/register"]["post"]["responses"]
    ref = "#/components/schemas/"
    assert chat["404"]["content"]["application/json"]["schema"] == {"$ref": ref + "OpenAIError"}
    assert operategpt["502"]["content"]["application/json"]["schema"] == {
        "$ref": ref + "OperateGPTError"
    }
    assert {"400", "401", "403", "415"} <= set(register)


async def test_no_route_documents_fastapis_own_validation_error(
    document: dict[str, Any],
) -> None:
    """FastAPI never validates a body here (the Router serves the table): no 422 of its own."""
    for operations in document["paths"].values():
        for operation in operations.values():
            assert "422" not in operation["responses"]
    assert "HTTPValidationError" not in document["components"]["schemas"]


async def test_streams_and_plain_text_answers_are_documented(document: dict[str, Any]) -> None:
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(chat) == {"application/json", "text/event-stream"}
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert set(metrics) == {"text/plain"}


async def test_query_parameters_are_documented(document: dict[str, Any]) -> None:
    readyz = document["paths"]["/readyz"]["get"]
    assert [(p["name"], p["in"], p["required"]) for p in readyz["parameters"]] == [
        ("model", "query", False)
    ]
    assert "503" in readyz["responses"]
    workers = document["paths"]["/api/server/workers"]["get"]
    assert [p["name"] for p in workers["parameters"]] == ["model_name"]


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        (
            ChatCompletionRequest,
            {
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "stream": True,
                "stream_options": {"include_usage": True},
                "logit_bias": {"1": 2},
            },
        ),
        (CompletionRequest, {"model": "m", "prompt": ["one"], "max_tokens": 5}),
        (CompletionRequest, {"model": "m", "prompt": [[1, 2], [3]]}),
        (EmbeddingRequest, {"model": "m", "input": ["a", "b"], "encoding_format": "float"}),
        (OperateGPTRequest, {"input": "hello", "model_name": "demo", "temperature": 0.2}),
        (WorkerSpec, template_registration("m", "http://127.0.0.1:8008")),
        (OfflineRequest, {"model_name": "m", "req_url_template": "http://127.0.0.1:8008"}),
    ],
)
def test_bodies_the_endpoints_accept_fit_their_models(
    model: type[BaseModel], body: dict[str, Any]
) -> None:
    model.model_validate(body)


def test_the_document_is_made_once() -> None:
    """It takes tens of milliseconds of CPU: a client asking for it again and again must not
    hold up the event loop each time."""
    assert openapi_schema() is openapi_schema()
