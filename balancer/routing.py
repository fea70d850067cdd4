"""The route table: every endpoint of the balancer, declared once, and the router that serves it.

Each route names the API whose error envelope its failures use. Inference routes forward to a
worker: each of their requests gets a `RequestRecord`, sent with `request_finished` once its
last byte is out. The router serves the table itself, in front of FastAPI: FastAPI's stack
(error, body-limit and telemetry middleware, routing, dependency solving) costs more per request
than the rest of the balancer together, and our endpoints need none of it. FastAPI keeps the
OpenAPI docs, made from this same table, and answers paths that are not in it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Body, Form, Query
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from balancer import __version__
from balancer.auth import check_admin_write, require_admin
from balancer.disconnects import Disconnects
from balancer.events import RequestFinished, RequestRecord
from balancer.forwarding import sse
from balancer.middleware import CLIENT_CLOSED_REQUEST, request_id_var
from balancer.responses import Reply, error_reply
from balancer.routes import console, openai, operategpt, ops, workers
from balancer.schemas import ERROR_ENVELOPES, OPERATIONS, Operation
from balancer.types import ClientApi
from balancer.wiring import Balancer

Method = Literal["GET", "POST", "DELETE"]
Admin = Literal["", "read", "write"]
Endpoint = Callable[[Request, Balancer], Awaitable[Response]]
InferenceEndpoint = Callable[[Request, Balancer, RequestRecord], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Route:
    method: Method
    path: str
    """Exact, or ending with one parameter (`/v1/models/{model}`) that takes the rest of the
    path, slashes included (model ids hold them: `meta-llama/Llama-3.1-8B`); the endpoint finds
    it in `request.path_params`."""
    endpoint: Endpoint
    api: ClientApi
    """Whose error envelope a failure is answered in."""
    tag: str
    admin: Admin = ""
    """`write`: it changes what every client gets, so it passes `auth.check_admin_write`
    (token or loopback, JSON only, same origin, a known Host) first. `read`: it shows the
    workers, so it needs the admin token when one is set."""


@dataclass(frozen=True, slots=True)
class InferenceRoute:
    """A route that forwards to a worker of a model: metered, one record per request."""

    method: Method
    path: str
    endpoint: InferenceEndpoint
    api: ClientApi
    tag: str
    passthrough: bool = False
    """A parameter route that takes whatever else is under its prefix (`/v1/{path}`): tried
    after every other route, and no reason for a 405 on other methods."""

    @property
    def label(self) -> str:
        """The `endpoint` label of its metrics: bounded, so `other` for a pass-through."""
        return openai.PASS_THROUGH_LABEL if self.passthrough else self.path


ROUTES: tuple[Route | InferenceRoute, ...] = (
    InferenceRoute("POST", "/v1/chat/completions", openai.chat_completions, "openai", "openai"),
    InferenceRoute("POST", "/v1/completions", openai.completions, "openai", "openai"),
    InferenceRoute("POST", "/v1/embeddings", openai.embeddings, "openai", "openai"),
    InferenceRoute("POST", "/v1/responses", openai.responses, "openai", "openai"),
    InferenceRoute(
        "GET", "/v1/responses/{response_id}", openai.stored_response, "openai", "openai"
    ),
    InferenceRoute(
        "DELETE", "/v1/responses/{response_id}", openai.stored_response, "openai", "openai"
    ),
    InferenceRoute(
        "POST", "/v1/responses/{response_id}", openai.stored_response, "openai", "openai"
    ),
    InferenceRoute("POST", "/v1/images/generations", openai.image_generations, "openai", "openai"),
    InferenceRoute("POST", "/v1/images/edits", openai.image_edits, "openai", "openai"),
    InferenceRoute("POST", "/v1/audio/transcriptions", openai.transcriptions, "openai", "openai"),
    InferenceRoute("POST", "/v1/audio/translations", openai.translations, "openai", "openai"),
    InferenceRoute("POST", "/v1/audio/speech", openai.speech, "openai", "openai"),
    InferenceRoute("POST", "/v1/rerank", openai.rerank, "openai", "openai"),
    InferenceRoute("POST", "/v1/score", openai.score, "openai", "openai"),
    InferenceRoute("POST", "/v2/rerank", openai.rerank_v2, "openai", "openai"),
    InferenceRoute("POST", "/v1/{path}", openai.pass_through, "openai", "openai", passthrough=True),
    InferenceRoute("POST", "/api/v1/chat/completions", operategpt.chat, "operategpt", "operategpt"),
    Route("GET", "/v1/models", openai.list_models, "openai", "openai"),
    Route("GET", "/v1/models/{model}", openai.retrieve_model, "openai", "openai"),
    Route(
        "POST", "/api/server/register", workers.register, "operategpt", "registry", admin="write"
    ),
    Route(
        "GET", "/api/server/workers", workers.list_workers, "operategpt", "registry", admin="read"
    ),
    Route("POST", "/api/server/offline", workers.offline, "operategpt", "registry", admin="write"),
    Route("POST", "/api/server/drain", workers.drain, "operategpt", "registry", admin="write"),
    Route(
        "POST", "/api/server/weight", workers.set_weight, "operategpt", "registry", admin="write"
    ),
    Route("GET", "/api/server/health", workers.health, "operategpt", "registry", admin="read"),
    Route("GET", "/api/server/live", console.live, "operategpt", "console", admin="read"),
    Route("GET", "/ui", console.page, "operategpt", "console"),
    Route("GET", "/healthz", ops.healthz, "operategpt", "ops"),
    Route("GET", "/readyz", ops.readyz, "operategpt", "ops"),
    Route("GET", "/metrics", ops.metrics, "operategpt", "ops"),
)


def api_of_path(path: str) -> ClientApi:
    """The envelope for a path outside the table: OpenAI's under /v1/, OperateGPT's else."""
    return "openai" if path.startswith("/v1/") else "operategpt"


class Router:
    """Serves the route table; everything else goes on to `fallback` (FastAPI)."""

    def __init__(
        self,
        fallback: ASGIApp,
        balancer: Balancer,
        routes: tuple[Route | InferenceRoute, ...] = ROUTES,
        *,
        disconnects: Disconnects | None = None,
    ) -> None:
        self.fallback = fallback
        self.balancer = balancer
        self.disconnects = disconnects or Disconnects()
        self._routes: dict[tuple[str, str], Route | InferenceRoute] = {}
        self._methods: dict[str, list[str]] = {}
        # Routes with a parameter are looked at only when no exact path matched.
        self._with_parameter: dict[str, tuple[str, dict[str, Route | InferenceRoute]]] = {}
        # Pass-through routes only when nothing else did, by method: (prefix, parameter, route).
        self._passthrough: dict[str, list[tuple[str, str, InferenceRoute]]] = {}
        for route in routes:
            prefix, parameter = _split_parameter(route.path)
            if isinstance(route, InferenceRoute) and route.passthrough:
                assert parameter is not None, route.path
                self._passthrough.setdefault(route.method, []).append((prefix, parameter, route))
            elif parameter is None:
                self._routes[(route.method, route.path)] = route
                self._methods.setdefault(route.path, []).append(route.method)
            else:
                _, by_method = self._with_parameter.setdefault(prefix, (parameter, {}))
                by_method[route.method] = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = self._routes.get((scope["method"], scope["path"]))
            if route is None and self._with_parameter:
                route = self._match_parameter(scope)
            if isinstance(route, InferenceRoute):
                await self._serve_inference(route, scope, receive, send)
                return
            if route is not None:
                await self._serve(route, scope, receive, send)
                return
            allowed = self._methods.get(scope["path"]) or self._parameter_methods(scope["path"])
            if allowed:
                await self._method_not_allowed(allowed, scope, receive, send)
                return
            passthrough = self._match_passthrough(scope)
            if passthrough is not None:
                await self._serve_inference(passthrough, scope, receive, send)
                return
        await self.fallback(scope, receive, send)

    def _match_passthrough(self, scope: Scope) -> InferenceRoute | None:
        path: str = scope["path"]
        for prefix, parameter, route in self._passthrough.get(scope["method"], ()):
            if len(path) > len(prefix) and path.startswith(prefix):
                scope["path_params"] = {parameter: path[len(prefix) :]}
                return route
        return None

    def _match_parameter(self, scope: Scope) -> Route | InferenceRoute | None:
        """The route whose parameter takes the rest of the path; its value goes to the scope's
        `path_params`, where Starlette's `Request` finds it."""
        path: str = scope["path"]
        for prefix, (parameter, by_method) in self._with_parameter.items():
            if len(path) > len(prefix) and path.startswith(prefix):
                route = by_method.get(scope["method"])
                if route is not None:
                    scope["path_params"] = {parameter: path[len(prefix) :]}
                return route
        return None

    def _parameter_methods(self, path: str) -> list[str]:
        for prefix, (_, by_method) in self._with_parameter.items():
            if len(path) > len(prefix) and path.startswith(prefix):
                return list(by_method)
        return []

    async def _serve(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            if route.admin == "write":
                check_admin_write(request, self.balancer.settings)
            elif route.admin == "read" and self.balancer.settings.admin_token is not None:
                require_admin(request, self.balancer.settings)
            response = await route.endpoint(request, self.balancer)
        except ClientDisconnect:
            return  # gone while it was sending its body: nobody to answer
        except Exception as exc:
            response = error_reply(route.api, exc)
        await response(scope, receive, send)

    async def _serve_inference(
        self, route: InferenceRoute, scope: Scope, receive: Receive, send: Send
    ) -> None:
        record = RequestRecord(
            route.api, time.perf_counter(), request_id_var.get(), endpoint=route.label
        )
        # What the client is told, unless it leaves before an answer is ready (then 499, as
        # nginx logs a client that closed its request).
        status = CLIENT_CLOSED_REQUEST
        watch = self.disconnects.watch(receive)
        request = Request(scope, watch.receive)
        try:
            try:
                response = await route.endpoint(request, self.balancer, record)
            except ClientDisconnect:
                return  # gone while it was sending its body: nobody to answer
            except Exception as exc:
                response = error_reply(route.api, exc)
            status = response.status_code
            # A stream that breaks halfway raises out of here, and the server drops the
            # connection: the client must not mistake a cut answer for a whole one.
            await response(scope, receive, send)
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            # The client left, and `watch` stopped the work for it (leases are back, no attempt
            # goes on, a stream is closed): a quiet end, counted as 499 if no answer had
            # started.
            watch.task.uncancel()
        finally:
            watch.done()
            # A request whose client left (a cancellation) is counted too.
            finished = self.balancer.events.request_finished
            if finished:
                finished.send(RequestFinished(record, status, time.perf_counter()))

    async def _method_not_allowed(
        self, allowed: list[str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        path = scope["path"]
        error = HTTPException(
            405,
            f"method {scope['method']} not allowed on {path}",
            headers={"Allow": ", ".join(allowed)},
        )
        await error_reply(api_of_path(path), error)(scope, receive, send)


def _split_parameter(path: str) -> tuple[str, str | None]:
    """`/v1/models/{model}` → (`/v1/models/`, `model`); a path without one → (path, None)."""
    head, brace, name = path.rpartition("{")
    if not brace:
        return path, None
    if not name.endswith("}") or "{" in head or "}" in head or not head.endswith("/"):
        raise ValueError(f"route {path}: only one parameter, as the last path segment")
    return head, name[:-1]


@functools.cache
def openapi_schema(routes: tuple[Route | InferenceRoute, ...] = ROUTES) -> dict[str, Any]:
    """The OpenAPI document of the route table (FastAPI's `/docs` and `/openapi.json`): each
    route's body, query parameters and answers as `schemas.OPERATIONS` describes them.

    Made once (it takes tens of milliseconds of CPU, on the event loop): callers share the
    one document and must not change it."""
    documented = [
        APIRoute(
            route.path,
            _describing(operation),
            methods=[route.method],
            tags=[route.tag],
            name=route.endpoint.__name__,
            summary=route.endpoint.__name__.replace("_", " ").capitalize(),
            description=route.endpoint.__doc__ or "",
            openapi_extra=_parameter_doc(route.path),
            response_model=operation.answer,
            response_class=JSONResponse
            if operation.answer
            else HTMLResponse
            if operation.html
            else PlainTextResponse,
            responses=_responses(route.api, operation),
        )
        for route in routes
        for operation in [OPERATIONS.get((route.method, route.path), Operation())]
    ]
    return get_openapi(title="llm-balancer", version=__version__, routes=documented)


def _describing(operation: Operation) -> Callable[..., Awaitable[Response]]:
    """A stand-in endpoint whose signature tells FastAPI the route's body and query
    parameters; only the document is made from it (the Router serves every route, reading
    the body itself)."""

    async def describe_only(**_: Any) -> Response:
        raise NotImplementedError

    parameters = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[str, Query(description=description)],
        )
        for name, description in operation.query
    ]
    if operation.body is not None:
        kind = Form(media_type="multipart/form-data") if operation.form else Body()
        body = inspect.Parameter(
            "body", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[operation.body, kind]
        )
        parameters.append(body)
    describe_only.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return describe_only


def _responses(api: ClientApi, operation: Operation) -> dict[int | str, dict[str, Any]]:
    envelope = ERROR_ENVELOPES[api]
    responses: dict[int | str, dict[str, Any]] = {
        status: {"model": envelope} for status in operation.errors
    }
    responses.update({status: {"model": model} for status, model in operation.other_answers})
    if operation.answer is not None or operation.body is not None:
        # Any other error is in the same envelope. Saying so also keeps FastAPI from
        # documenting a 422 of its own body validation, which never runs here.
        responses["default"] = {"model": envelope, "description": "Any other error"}
    if operation.streams:
        stream = {"schema": {"type": "string", "description": "Server-sent events"}}
        responses[200] = {"content": {sse.CONTENT_TYPE: stream}}
    return responses


def _parameter_doc(path: str) -> dict[str, Any] | None:
    _, parameter = _split_parameter(path)
    if parameter is None:
        return None
    schema = {"type": "string"}
    return {"parameters": [{"name": parameter, "in": "path", "required": True, "schema": schema}]}
