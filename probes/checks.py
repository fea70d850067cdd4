"""What a probe sends to a worker, cheapest first. httpx here: probes are off the hot path."""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import orjson

from balancer.forwarding.prompt import template_request
from balancer.forwarding.upstream import openai_url, upstream_headers
from balancer.registry import Worker

PROBE_PROMPT = "ping"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    latency_ms: float
    error: str | None = None
    status: int | None = None
    """The HTTP status, or None when no answer came (connect error, timeout)."""


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Prober:
    """Sends one probe to one worker and says whether it is alive."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def probe(self, worker: Worker) -> ProbeResult:
        spec = worker.spec
        if spec.probe == "inference":
            return await self._inference(worker)
        if spec.health_url:
            return await self._send(worker, "GET", spec.health_url, ok_below=400)
        if spec.api == "openai":
            result = await self._send(worker, "GET", openai_url(worker, "/models"), ok_below=400)
            if result.ok or result.status is None:
                return result
            # Some OpenAI-style servers have no /models; their root /health is the next best.
            root = origin(spec.req_url_template) + "/health"
            return await self._send(worker, "GET", root, ok_below=400)
        # A generic HTTP API: a server that answers at all (below 500) is alive.
        return await self._send(worker, "GET", origin(spec.req_url_template) + "/", ok_below=500)

    async def _inference(self, worker: Worker) -> ProbeResult:
        """A real request for one token: costs a little, proves the model answers."""
        if worker.spec.api == "openai":
            body = orjson.dumps(
                {
                    "model": worker.spec.target_model,
                    "messages": [{"role": "user", "content": PROBE_PROMPT}],
                    "max_tokens": 1,
                }
            )
            url = openai_url(worker, "/chat/completions")
            return await self._send(
                worker, "POST", url, body=body, content_type="application/json", ok_below=300
            )
        request = template_request(worker, PROBE_PROMPT, None)
        return await self._send(
            worker,
            request.method,
            request.url,
            body=request.body,
            content_type=request.content_type,
            ok_below=300,
        )

    async def _send(
        self,
        worker: Worker,
        method: str,
        url: str,
        *,
        ok_below: int,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> ProbeResult:
        started = time.perf_counter()
        try:
            response = await self.client.request(
                method, url, content=body, headers=upstream_headers(worker, None, content_type)
            )
        except httpx.TimeoutException:
            return ProbeResult(False, _ms(started), f"{method} {url}: timed out")
        except httpx.HTTPError as exc:
            return ProbeResult(False, _ms(started), f"{method} {url}: {type(exc).__name__}: {exc}")
        latency = _ms(started)
        if response.status_code < ok_below:
            return ProbeResult(True, latency, status=response.status_code)
        return ProbeResult(
            False,
            latency,
            f"{method} {url}: HTTP {response.status_code}",
            status=response.status_code,
        )


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
