"""The console: a page (`/ui`) that shows every model and worker as they are now, and the one
JSON document it polls (`/api/server/live`). Its actions call the registry API, as any client
does, with the admin token the person gives it."""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from balancer.logging import redact_text
from balancer.registry import Worker
from balancer.responses import json_response
from balancer.wiring import Balancer

_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


@cache
def _page() -> tuple[bytes, dict[str, str]]:
    """The page (package data, read once) and its headers: its own inline script is the only
    one allowed to run, it talks to this origin only, and no other site may frame it (its
    buttons change the registry)."""
    page = resources.files("balancer").joinpath("static/console.html").read_bytes()
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode()}'"
        for m in _SCRIPT.finditer(page)
    )
    policy = (
        f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; form-action 'none'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    headers = {
        "Content-Security-Policy": policy,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return page, headers


async def page(request: Request, balancer: Balancer) -> Response:
    """The console: every model and worker, live, and what an operator does to them."""
    body, headers = _page()
    return Response(body, media_type="text/html; charset=utf-8", headers=headers)


async def live(request: Request, balancer: Balancer) -> Response:
    """Per model and worker: state, load, latencies and history, secrets redacted as in the
    listing."""
    registry = balancer.registry
    models = []
    for model in registry.models():
        workers = registry.workers_of(model) or []
        counts = {"healthy": 0, "ejected": 0, "unknown": 0, "draining": 0}
        for worker in workers:
            counts[worker.shown_status] += 1
        options = registry.options(model)
        models.append(
            {
                "model_name": model,
                "strategy": options.strategy or balancer.settings.strategy,
                "fallbacks": list(options.fallbacks),
                "counts": counts,
                **balancer.live.model(model).as_dict(),
                "workers": [_worker(balancer, w) for w in workers],
            }
        )
    return json_response({"success": True, "data": {"models": models}})


def _worker(balancer: Balancer, worker: Worker) -> dict[str, Any]:
    health = balancer.monitor.describe(worker)
    return {
        **worker.describe(),
        "health": health["status"],
        "since": health["since"],
        "last_probe_at": health["last_probe_at"],
        "last_probe_latency_ms": health["last_probe_latency_ms"],
        "last_error": health["last_error"],
        "consecutive_failures": health["consecutive_failures"],
        "ejections": health["ejections"],
        "ejection_reason": health["ejection_reason"],
        "last_ejection": _redacted(worker.health.last_ejection),
        "ejected_until": health["ejected_until"],
        **balancer.live.worker(worker.id).as_dict(),
    }


def _redacted(text: str | None) -> str | None:
    return None if text is None else redact_text(text)
