"""What a probe sends to a worker, cheapest first, and how long a probe may take."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

from balancer.config import DEFAULT_PROBE_TIMEOUT
from balancer.forwarding.prompt import template_request
from balancer.forwarding.upstream import openai_url, upstream_headers
from balancer.registry import Worker
from probes.client import ProbeClient, TooLarge, Unreachable
from probes.engine_metrics import EngineLoad, parse_engine_metrics

PROBE_PROMPT = "ping"
METRICS_LIMIT = 4 << 20
"""Bytes of a worker's /metrics read at most (vLLM's, histograms and all, is some 100 kB)."""
NO_METRICS_RETRY = 300.0
"""Seconds before a worker that has no engine metrics (404, or none we know) is asked again."""


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

    def __init__(self, client: ProbeClient, *, timeout: float = DEFAULT_PROBE_TIMEOUT) -> None:
        self.client = client
        self.timeout = timeout
        """Seconds one probe may take, all told: connecting, waiting, reading, a fallback."""
        self._no_metrics: dict[str, float] = {}
        """Worker id -> loop time before which its /metrics is not asked for again."""

    async def probe(self, worker: Worker) -> ProbeResult:
        deadline = asyncio.get_running_loop().time() + self.timeout
        spec = worker.spec
        if spec.probe == "inference":
            return await self._inference(worker, deadline)
        if spec.health_url:
            return await self._send(worker, deadline, "GET", spec.health_url, ok_below=400)
        if spec.api == "openai":
            models = openai_url(worker, "/models")
            result = await self._send(worker, deadline, "GET", models, ok_below=400)
            if result.status != 404:
                # A 401 or 403 too is a failed probe: with its configured key the worker cannot
                # serve, however alive it is.
                return result
            # Some OpenAI-style servers have no /models; their root /health is the next best.
            root = origin(spec.req_url_template) + "/health"
            return await self._send(worker, deadline, "GET", root, ok_below=400)
        # A generic HTTP API: a server that answers at all (below 500) is alive.
        root = origin(spec.req_url_template) + "/"
        return await self._send(worker, deadline, "GET", root, ok_below=500)

    async def read_engine(self, worker: Worker) -> EngineLoad | None:
        """What an `openai` worker's server says of its load on its /metrics (vLLM, SGLang, TGI,
        llama.cpp), or None when unknown. Never fails: a server without metrics is simply not
        asked again for NO_METRICS_RETRY seconds; one that does not answer is asked next time."""
        if worker.spec.api != "openai":
            return None
        now = asyncio.get_running_loop().time()
        if self._no_metrics.get(worker.id, 0.0) > now:
            return None
        self._no_metrics.pop(worker.id, None)
        url = origin(worker.spec.req_url_template) + "/metrics"
        try:
            async with asyncio.timeout(self.timeout):
                status, body = await self.client.get(
                    url, headers=upstream_headers(worker, None, None), limit=METRICS_LIMIT
                )
        except TooLarge:
            self._no_metrics[worker.id] = now + NO_METRICS_RETRY  # not worth reading each time
            return None
        except (TimeoutError, Unreachable):
            return None
        load = parse_engine_metrics(body.decode(errors="replace")) if status == 200 else None
        if load is None and status < 500:
            self._no_metrics[worker.id] = now + NO_METRICS_RETRY
        return load

    def forget(self, worker_id: str) -> None:
        self._no_metrics.pop(worker_id, None)

    async def _inference(self, worker: Worker, deadline: float) -> ProbeResult:
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
                worker,
                deadline,
                "POST",
                url,
                body=body,
                content_type="application/json",
                ok_below=300,
            )
        request = template_request(worker, PROBE_PROMPT, None)
        return await self._send(
            worker,
            deadline,
            request.method,
            request.url,
            body=request.body,
            content_type=request.content_type,
            ok_below=300,
        )

    async def _send(
        self,
        worker: Worker,
        deadline: float,
        method: str,
        url: str,
        *,
        ok_below: int,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> ProbeResult:
        started = time.perf_counter()
        headers = upstream_headers(worker, None, content_type)
        try:
            # One deadline for the whole probe: a worker that trickles its answer a byte at a
            # time is cut off at it like one that never answers (the request is cancelled and
            # its connection dropped).
            async with asyncio.timeout_at(deadline):
                status = await self.client.request(method, url, headers=headers, body=body)
        except TimeoutError:
            return ProbeResult(
                False, _ms(started), f"{method} {url}: timed out (probe timeout {self.timeout:g} s)"
            )
        except Unreachable as exc:
            return ProbeResult(False, _ms(started), f"{method} {url}: {exc}")
        latency = _ms(started)
        if status < ok_below:
            return ProbeResult(True, latency, status=status)
        return ProbeResult(False, latency, f"{method} {url}: HTTP {status}", status=status)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
