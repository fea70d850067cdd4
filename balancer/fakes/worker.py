"""A fake LLM worker for the demo, the tests, the benchmark and docker-compose.

It speaks both APIs a worker may have: OpenAI-compatible (`/v1/...`, with SSE streaming) and an
OperateGPT-style template API (`/api/generate`, answer at `data.items[].attributes.answer`). It
answers `[<name>] <prompt>`, so a caller can tell who answered what. A raw ASGI app, so that it is
never the bottleneck of a benchmark. Its behaviour (latency, failures, stalls) can be changed while
it runs with `POST /_control`; `GET /_stats` counts what it served.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from balancer.forwarding import sse

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", sse.CONTENT_TYPE.encode()), (b"cache-control", b"no-cache")]


@dataclass(slots=True)
class Behaviour:
    name: str = "fake"
    latency: float = 0.0
    """Seconds before an inference answer (or before the first chunk of a stream)."""
    fail_rate: float = 0.0
    """Fraction of inference calls answered with `fail_status`."""
    fail_status: int = 500
    fail_fast: bool = False
    """Fail before the latency, as a crashing server does, instead of after it."""
    retry_after: float = 0.0
    """Sent as Retry-After with failures, when set."""
    chunks: int = 8
    """Chunks in a streamed answer."""
    chunk_delay: float = 0.0
    """Seconds between streamed chunks."""
    break_after: int = -1
    """Drop the connection after this many streamed chunks (-1: never)."""
    stall_after: int = -1
    """Stop sending, without closing, after this many streamed chunks (-1: never)."""
    health_status: int = 200
    # How the answers are written, as other servers write them (the default is compact JSON,
    # `data: ` and \n\n, as sse.json_event writes).
    spaced_json: bool = False
    """JSON as Python's json.dumps writes it (`"content": "x"`), as FastChat and others do."""
    sse_no_space: bool = False
    """`data:{...}`, without the optional space."""
    crlf: bool = False
    """Events end with CRLF CRLF, as sse-starlette's do."""
    usage_null: bool = False
    """`"usage": null` on every chunk once `include_usage` is asked for, as vLLM does."""
    omit_usage: bool = False
    """No `usage` in answers, streamed or not, whatever was asked."""
    chunk_split: int = 0
    """Write only this many bytes of each event, the rest with the next one, as a busy
    connection delivers them: no read then ends with a whole event (0: an event a write)."""


class FakeWorker:
    def __init__(self, behaviour: Behaviour | None = None, *, seed: int | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.served: dict[str, int] = {}
        self.inflight = 0
        self.peak_inflight = 0
        """The most inference calls it had at once (what a max_concurrency must bound)."""
        self._random = random.Random(seed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        body = await _read_body(receive)
        b = self.behaviour
        if not path.startswith("/_"):
            self.served[path] = self.served.get(path, 0) + 1
        if path in ("/", "/health", "/healthz") and method == "GET":
            await _reply(send, b.health_status, {"status": "ok", "name": b.name})
            return
        if path == "/v1/models" and method == "GET":
            await _reply(
                send,
                b.health_status,
                {
                    "object": "list",
                    "data": [
                        {"id": "fake-model", "object": "model", "created": 0, "owned_by": b.name}
                    ],
                },
            )
            return
        if path == "/_control" and method == "POST":
            await self._control(send, body)
            return
        if path == "/_stats":
            stats = {"name": b.name, "served": self.served, "peak_inflight": self.peak_inflight}
            await _reply(send, 200, stats)
            return
        handler = _ROUTES.get((method, path))
        if handler is None:
            await _reply(send, 404, {"error": {"message": f"no route {method} {path}"}})
            return
        try:
            request = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            await _reply(send, 400, {"error": {"message": "body is not JSON"}})
            return
        if method == "GET":
            request = dict(_query(scope))
        self.inflight += 1
        self.peak_inflight = max(self.peak_inflight, self.inflight)
        try:
            await self._infer(handler, request, send)
        finally:
            self.inflight -= 1

    async def _infer(self, handler: Any, request: dict[str, Any], send: Send) -> None:
        b = self.behaviour
        failing = bool(b.fail_rate) and self._random.random() < b.fail_rate
        if b.latency and not (failing and b.fail_fast):
            await asyncio.sleep(b.latency)
        if failing:
            extra = [(b"retry-after", str(b.retry_after).encode())] if b.retry_after else []
            await _reply(
                send,
                b.fail_status,
                {"error": {"message": f"{b.name} failed on purpose", "type": "server_error"}},
                extra,
            )
            return
        await handler(self, request, send)

    async def _control(self, send: Send, body: bytes) -> None:
        changes = orjson.loads(body) if body else {}
        known = {f.name for f in fields(Behaviour)}
        for key, value in changes.items():
            if key in known:
                setattr(self.behaviour, key, value)
        await _reply(send, 200, asdict(self.behaviour))

    def answer(self, prompt: str) -> str:
        return f"[{self.behaviour.name}] {prompt}"

    async def _chat(self, request: dict[str, Any], send: Send) -> None:
        if not isinstance(request.get("messages"), list) or not request["messages"]:
            await _reply(
                send,
                400,
                {"error": {"message": "messages is required", "type": "invalid_request_error"}},
            )
            return
        content = request["messages"][-1].get("content", "")
        prompt = content if isinstance(content, str) else orjson.dumps(content).decode()
        text = self.answer(prompt)
        model = request.get("model", "fake-model")
        if request.get("stream"):
            await self._stream(send, model, prompt, text, request, chat=True)
            return
        await self._answer(
            send,
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": _usage(prompt, text),
            },
        )

    async def _completion(self, request: dict[str, Any], send: Send) -> None:
        prompt = request.get("prompt", "")
        prompt = prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode()
        text = self.answer(prompt)
        model = request.get("model", "fake-model")
        if request.get("stream"):
            await self._stream(send, model, prompt, text, request, chat=False)
            return
        await self._answer(
            send,
            {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                "usage": _usage(prompt, text),
            },
        )

    async def _answer(self, send: Send, answer: dict[str, Any]) -> None:
        if self.behaviour.omit_usage:
            answer.pop("usage")
        await send({"type": "http.response.start", "status": 200, "headers": _JSON})
        await send({"type": "http.response.body", "body": self._json(answer)})

    def _json(self, document: Any) -> bytes:
        return (
            json.dumps(document).encode() if self.behaviour.spaced_json else orjson.dumps(document)
        )

    def _event(self, data: bytes) -> bytes:
        b = self.behaviour
        return (
            (b"data:" if b.sse_no_space else b"data: ")
            + data
            + (b"\r\n\r\n" if b.crlf else b"\n\n")
        )

    async def _stream(
        self, send: Send, model: str, prompt: str, text: str, request: dict[str, Any], *, chat: bool
    ) -> None:
        b = self.behaviour
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        n = max(1, b.chunks)
        step = -(-len(text) // n) or 1
        pieces = [text[i : i + step] for i in range(0, len(text), step)] or [""]
        created = int(time.time())
        options = request.get("stream_options")
        with_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        with_usage = with_usage and not b.omit_usage
        extra: dict[str, Any] = {"usage": None} if with_usage and b.usage_null else {}
        writer = _StreamWriter(send, b.chunk_split)
        for index, piece in enumerate(pieces):
            if index == b.break_after:
                raise ConnectionAbortedError(f"{b.name} breaks the stream on purpose")
            if index == b.stall_after:
                await asyncio.sleep(3600)
            if index and b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
            choice: dict[str, Any] = (
                {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                if chat
                else {"index": 0, "text": piece, "finish_reason": None}
            )
            if chat and index == 0:
                choice["delta"]["role"] = "assistant"
            chunk = {
                "id": "chunk-fake",
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": model,
                "choices": [choice],
                **extra,
            }
            await writer.write(self._event(self._json(chunk)))
        last: dict[str, Any] = (
            {"index": 0, "delta": {}, "finish_reason": "stop"}
            if chat
            else {"index": 0, "text": "", "finish_reason": "stop"}
        )
        tail = self._event(
            self._json(
                {
                    "id": "chunk-fake",
                    "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [last],
                    **extra,
                }
            )
        )
        if with_usage:
            tail += self._event(
                self._json(
                    {
                        "id": "chunk-fake",
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": _usage(prompt, text),
                    }
                )
            )
        await writer.write(tail + self._event(b"[DONE]"), last=True)

    async def _embeddings(self, request: dict[str, Any], send: Send) -> None:
        inputs = request.get("input", "")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(str(item))}
            for i, item in enumerate(items)
        ]
        await _reply(
            send,
            200,
            {
                "object": "list",
                "data": data,
                "model": request.get("model", "fake-model"),
                "usage": {"prompt_tokens": len(items), "total_tokens": len(items)},
            },
        )

    async def _text(self, request: dict[str, Any], send: Send) -> None:
        prompt = request.get("input", request.get("prompt", ""))
        text = self.answer(prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode())
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await send({"type": "http.response.body", "body": text.encode()})

    async def _generate(self, request: dict[str, Any], send: Send) -> None:
        prompt = request.get("input", request.get("prompt", ""))
        text = self.answer(prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode())
        await _reply(
            send, 200, {"data": {"items": [{"attributes": {"answer": text, "request": request}}]}}
        )


class _StreamWriter:
    """Writes a stream's events; with `cut`, only that many bytes of each, the rest with the
    next write."""

    def __init__(self, send: Send, cut: int) -> None:
        self.send = send
        self.cut = cut
        self._rest = b""

    async def write(self, events: bytes, *, last: bool = False) -> None:
        body, self._rest = self._rest + events, b""
        if not last and 0 < self.cut < len(events):
            keep = len(body) - len(events) + self.cut
            body, self._rest = body[:keep], body[keep:]
        await self.send({"type": "http.response.body", "body": body, "more_body": not last})


_ROUTES = {
    ("POST", "/v1/chat/completions"): FakeWorker._chat,
    ("POST", "/v1/completions"): FakeWorker._completion,
    ("POST", "/v1/embeddings"): FakeWorker._embeddings,
    ("POST", "/api/generate"): FakeWorker._generate,
    ("GET", "/api/generate"): FakeWorker._generate,
    ("POST", "/api/text"): FakeWorker._text,
    ("GET", "/api/text"): FakeWorker._text,
}


def _usage(prompt: str, text: str) -> dict[str, int]:
    p, c = len(prompt.split()) or 1, len(text.split()) or 1
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(byte / 255.0, 4) for byte in digest[:8]]


def _query(scope: Scope) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(scope.get("query_string", b"").decode())


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


async def _reply(
    send: Send, status: int, obj: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": _JSON + headers if headers else _JSON,
        }
    )
    await send({"type": "http.response.body", "body": orjson.dumps(obj)})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def run(host: str, port: int, behaviour: Behaviour) -> None:
    """Serve one fake worker until interrupted (uvloop + httptools, no access log)."""
    import uvicorn

    uvicorn.run(
        FakeWorker(behaviour),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="off",
        # A stalled stream (stall_after) must not hold up shutdown.
        timeout_graceful_shutdown=1,
    )
