"""The inference routes, dispatched in front of FastAPI.

FastAPI's stack (error, body-limit and telemetry middleware, routing, dependency solving) costs
more per request than the rest of the balancer together, and the hot routes need none of it:
they read their body as bytes and answer with prebuilt responses. Every other path (admin, ops,
OpenAPI docs) falls through to FastAPI. The same route functions serve both ways.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from balancer.errors import BalancerError
from balancer.responses import handle_balancer_error

Endpoint = Callable[[Request], Awaitable[Response]]


class FastPath:
    def __init__(self, app: ASGIApp, routes: dict[tuple[str, str], Endpoint]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self.routes.get((scope["method"], scope["path"]))
            if endpoint is not None:
                scope["app"] = self.app  # what request.app (and so services()) reads
                request = Request(scope, receive)
                try:
                    response = await endpoint(request)
                except BalancerError as exc:
                    response = await handle_balancer_error(request, exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
