"""`balancer fake-worker --engine`: a fake worker whose OpenAI endpoints are served by the
simulated engine of `engine.py`, with vLLM's metrics on `/metrics`.

Tokens are words. A chat is rendered as vLLM's chat templates do, role markers and all, with the
generation prompt last (`<|user|> hi <|assistant|>`), so a conversation's next turn starts with
exactly the tokens of the previous turn and its answer, and finds them in the prefix cache.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import Receive, Scope, Send

from balancer.fakes.engine import Engine, EngineConfig, Request, TooLong
from balancer.fakes.worker import (
    _PROMETHEUS,
    _SSE,
    Behaviour,
    FakeWorker,
    _invalid,
    _read_body,
    _reply,
)

MODEL = "fake-model"
ANSWER = "the quick brown fox jumps over the lazy dog"


def render_chat(messages: list[Any]) -> list[str]:
    """The prompt's tokens: each message as its role marker and its words, then the marker the
    answer follows."""
    tokens: list[str] = []
    for message in messages:
        role = message.get("role", "user") if isinstance(message, dict) else "user"
        content = message.get("content", "") if isinstance(message, dict) else message
        text = content if isinstance(content, str) else orjson.dumps(content).decode()
        tokens.append(f"<|{role}|>")
        tokens += text.split()
    tokens.append("<|assistant|>")
    return tokens


class EngineWorker(FakeWorker):
    """The fake worker with an engine behind `/v1/chat/completions` and `/v1/completions`."""

    def __init__(self, behaviour: Behaviour | None = None, config: EngineConfig | None = None):
        super().__init__(behaviour)
        self.engine = Engine(config, answer=f"[{self.behaviour.name}] {ANSWER}")
        self._listeners: dict[Request, asyncio.Queue[str | None]] = {}
        self._runner: asyncio.Task[None] | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_VllmMetrics(self.engine))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = (scope["method"], scope["path"])
            if route == ("GET", "/metrics"):
                await send({"type": "http.response.start", "status": 200, "headers": _PROMETHEUS})
                await send({"type": "http.response.body", "body": generate_latest(self.registry)})
                return
            if route == ("POST", "/reset_prefix_cache"):
                if self.engine.reset_prefix_cache():
                    await _reply(send, 200, {"reset": True})
                else:
                    message = "requests are running: their blocks cannot be forgotten"
                    await _reply(send, 409, {"error": {"message": message}})
                return
            if route in (("POST", "/v1/chat/completions"), ("POST", "/v1/completions")):
                await self._engine_answer(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _engine_answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        self.served[path] = self.served.get(path, 0) + 1
        try:
            body = orjson.loads(await _read_body(receive))
        except orjson.JSONDecodeError:
            await _reply(send, 400, {"error": {"message": "body is not JSON"}})
            return
        chat = path.endswith("/chat/completions")
        if not isinstance(body, dict) or (
            chat and (not isinstance(body.get("messages"), list) or not body["messages"])
        ):
            await _invalid(send, "messages is required" if chat else "a JSON object is required")
            return
        if chat:
            prompt = render_chat(body["messages"])
        else:
            text = body.get("prompt", "")
            prompt = (text if isinstance(text, str) else orjson.dumps(text).decode()).split()
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            await _invalid(send, "max_tokens must be a positive integer")
            return
        try:
            request = self.engine.submit(prompt, limit)
        except TooLong as exc:
            await _invalid(send, str(exc))
            return
        tokens: asyncio.Queue[str | None] = asyncio.Queue()
        self._listeners[request] = tokens
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        # A client that leaves while its request waits in the queue sends nothing more and is
        # sent nothing: only its disconnect message tells.
        watcher = asyncio.create_task(self._watch(receive, request, tokens))
        try:
            model = body.get("model", MODEL)
            if body.get("stream"):
                await self._stream_tokens(send, request, tokens, model, body, chat=chat)
            else:
                await self._whole_answer(send, request, tokens, model, chat=chat)
        finally:
            # Finished, or the client left (a failed send, a cancellation): its slot is free.
            watcher.cancel()
            self._listeners.pop(request, None)
            self.engine.abort(request)

    async def _watch(
        self, receive: Receive, request: Request, tokens: asyncio.Queue[str | None]
    ) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.engine.abort(request)
        tokens.put_nowait(None)

    async def _run(self) -> None:
        """The engine's loop: one step, its time on the simulated GPU, then its tokens."""
        try:
            while self.engine.has_work():
                step = self.engine.step()
                await asyncio.sleep(step.duration or 0.001)
                for request, token in step.tokens:
                    if (listener := self._listeners.get(request)) is not None:
                        listener.put_nowait(token)
                for request in step.finished:
                    if (listener := self._listeners.get(request)) is not None:
                        listener.put_nowait(None)
        finally:
            self._runner = None

    async def _whole_answer(
        self,
        send: Send,
        request: Request,
        tokens: asyncio.Queue[str | None],
        model: str,
        *,
        chat: bool,
    ) -> None:
        while await tokens.get() is not None:
            pass
        text = " ".join(request.output)
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text}}
            if chat
            else {"index": 0, "text": text}
        )
        choice["finish_reason"] = "length"
        answer = {
            "id": "chatcmpl-engine" if chat else "cmpl-engine",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": _usage(request),
        }
        await self._answer(send, answer)

    async def _stream_tokens(
        self,
        send: Send,
        request: Request,
        tokens: asyncio.Queue[str | None],
        model: str,
        body: dict[str, Any],
        *,
        chat: bool,
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        options = body.get("stream_options")
        with_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        created = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"
        first = True
        while (token := await tokens.get()) is not None:
            piece = token if first else " " + token
            choice: dict[str, Any] = (
                {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                if chat
                else {"index": 0, "text": piece, "finish_reason": None}
            )
            if chat and first:
                choice["delta"]["role"] = "assistant"
            first = False
            chunk = {"id": "chunk-engine", "object": kind, "created": created, "model": model}
            chunk["choices"] = [choice]
            await self._send_event(send, chunk)
        last: dict[str, Any] = (
            {"index": 0, "delta": {}, "finish_reason": "length"}
            if chat
            else {"index": 0, "text": "", "finish_reason": "length"}
        )
        chunk = {"id": "chunk-engine", "object": kind, "created": created, "model": model}
        await self._send_event(send, {**chunk, "choices": [last]})
        if with_usage:
            await self._send_event(send, {**chunk, "choices": [], "usage": _usage(request)})
        await send({"type": "http.response.body", "body": self._event(b"[DONE]")})

    async def _send_event(self, send: Send, data: dict[str, Any]) -> None:
        event = self._event(self._json(data))
        await send({"type": "http.response.body", "body": event, "more_body": True})


class _VllmMetrics(Collector):
    """The engine's state under vLLM's metric names and labels, read at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        engine, labels = self.engine, ["engine", "model_name"]
        values = ["0", MODEL]

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text, labels=labels)
            family.add_metric(values, value)
            return family

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, text, labels=labels)
            family.add_metric(values, value)
            return family

        yield gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            len(engine.running),
        )
        yield gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            len(engine.waiting),
        )
        yield gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            engine.kv_cache_usage,
        )
        yield counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            engine.prefix_cache_queries,
        )
        yield counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            engine.prefix_cache_hits,
        )
        yield counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", engine.prompt_tokens
        )
        yield counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            engine.generation_tokens,
        )


def _usage(request: Request) -> dict[str, Any]:
    prompt, completion = len(request.prompt), len(request.output)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": request.cached_tokens},
    }
