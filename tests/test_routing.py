"""The route table: every route is served by the router, in its API's error envelope; FastAPI
answers the rest (docs, unknown paths) in the envelope the path implies."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from balancer.config import Settings
from balancer.routing import ROUTES, InferenceRoute, Route, Router
from balancer.schemas import OPERATIONS
from balancer.types import ClientApi
from balancer.wiring import Balancer, build
from tests.inprocess import InProcess

pytestmark = pytest.mark.anyio


def envelope_of(body: Any) -> ClientApi:
    """Whose error envelope a reply is in: OpenAI's {"error": {...}} or OperateGPT's."""
    if isinstance(body, dict) and set(body) == {"error"}:
        assert set(body["error"]) >= {"message", "type", "code"}
        return "openai"
    assert isinstance(body, dict) and body.get("success") is False, body
    assert isinstance(body["msg"], str)
    return "operategpt"


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_every_route_of_the_table_is_served(lb: InProcess, route: Route) -> None:
    """GETs answer; POSTs without a body are refused by the endpoint itself, in its route's
    envelope (FastAPI would say "no route" or 405)."""
    if route.path == "/v1/responses/{response_id}":
        cancel = "/cancel" if route.method == "POST" else ""
        reply = await lb.client.request(route.method, f"/v1/responses/resp_unknown{cancel}")
        assert reply.status_code == 404, reply.text
        assert envelope_of(reply.json()) == route.api
        assert "does not know which worker holds it" in reply.text
    elif route.method == "GET":
        await lb.register_openai("some/model", lb.worker("w1"))
        reply = await lb.client.get(route.path.replace("{model}", "some/model"))
        assert reply.status_code == 200, reply.text
    elif OPERATIONS[(route.method, route.path)].form:
        reply = await lb.client.post(route.path, content=b"", headers=FORM_HEADER)
        assert reply.status_code == 400, reply.text
        assert envelope_of(reply.json()) == route.api
        assert "model is required" in reply.text
    elif route.path == "/v1/{path}":
        reply = await lb.client.post("/v1/anything", content=b"", headers=JSON_HEADER)
        assert reply.status_code == 404, reply.text
        assert envelope_of(reply.json()) == route.api
        assert "no route /v1/anything" in reply.text
    else:
        reply = await lb.client.post(route.path, content=b"", headers=JSON_HEADER)
        assert reply.status_code == 400, reply.text
        assert envelope_of(reply.json()) == route.api
        assert "request body is empty" in reply.text


JSON_HEADER = {"Content-Type": "application/json"}
FORM_HEADER = {"Content-Type": "multipart/form-data; boundary=x"}


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/v1/nothing", "openai"),
        ("/v1/chat/completions/extra", "openai"),
        ("/api/nothing", "operategpt"),
        ("/nothing", "operategpt"),
    ],
)
async def test_an_unknown_path_is_404_in_the_envelope_its_prefix_implies(
    lb: InProcess, path: str, api: ClientApi
) -> None:
    reply = await lb.client.post(path, json={})
    assert reply.status_code == 404
    assert envelope_of(reply.json()) == api
    assert f"no route {path}" in reply.text


@pytest.mark.parametrize(
    ("method", "path", "allow", "api"),
    [
        ("GET", "/v1/chat/completions", "POST", "openai"),
        ("POST", "/v1/models", "GET", "openai"),
        ("GET", "/api/v1/chat/completions", "POST", "operategpt"),
        ("DELETE", "/api/server/register", "POST", "operategpt"),
        ("POST", "/healthz", "GET", "operategpt"),
    ],
)
async def test_a_wrong_method_is_405_with_an_allow_header(
    lb: InProcess, method: str, path: str, allow: str, api: ClientApi
) -> None:
    reply = await lb.client.request(method, path)
    assert reply.status_code == 405
    assert reply.headers["Allow"] == allow
    assert envelope_of(reply.json()) == api
    assert f"method {method} not allowed on {path}" in reply.text


async def test_openapi_lists_every_route_of_the_table_and_nothing_else(lb: InProcess) -> None:
    reply = await lb.client.get("/openapi.json")
    assert reply.status_code == 200
    documented = {
        (method.upper(), path)
        for path, operations in reply.json()["paths"].items()
        for method in operations
    }
    assert documented == {(route.method, route.path) for route in ROUTES}


async def test_the_docs_page_is_served(lb: InProcess) -> None:
    reply = await lb.client.get("/docs")
    assert reply.status_code == 200
    assert "text/html" in reply.headers["content-type"]


async def test_a_routes_errors_are_in_its_apis_envelope(lb: InProcess) -> None:
    """The same mistake (an unknown model) in each API's words."""
    openai = await lb.client.post(
        "/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user"}]}
    )
    operategpt = await lb.client.post(
        "/api/v1/chat/completions", json={"input": "x", "model_name": "nope"}
    )
    assert (openai.status_code, operategpt.status_code) == (404, 404)
    assert openai.json()["error"]["code"] == "model_not_found"
    assert envelope_of(openai.json()) == "openai"
    assert envelope_of(operategpt.json()) == "operategpt"


async def _boom(request: Request, balancer: Balancer) -> Response:
    raise RuntimeError("a bug")


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await Response(b"fallback", 404)(scope, receive, send)


@pytest.mark.parametrize(("api", "path"), [("openai", "/v1/boom"), ("operategpt", "/api/boom")])
async def test_an_unexpected_error_is_a_json_500_in_the_routes_envelope_and_is_logged(
    api: ClientApi, path: str
) -> None:
    balancer = build(Settings(store="sqlite:///:memory:"))
    table: tuple[Route | InferenceRoute, ...] = (Route("GET", path, _boom, api, "test"),)
    router = Router(_not_found, balancer, routes=table)
    transport = httpx.ASGITransport(app=router)
    async with httpx.AsyncClient(transport=transport, base_url="http://balancer") as client:
        with structlog.testing.capture_logs() as logs:
            reply = await client.get(path)
    assert reply.status_code == 500
    assert envelope_of(reply.json()) == api
    assert "internal error" in reply.text
    assert "a bug" not in reply.text  # the details are for the log, not the client
    [logged] = [e for e in logs if e["event"] == "unhandled_error"]
    assert logged["log_level"] == "error"
    assert isinstance(logged["exc_info"], RuntimeError)
