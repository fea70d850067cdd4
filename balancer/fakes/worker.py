"""A fake LLM worker for the demo, the tests, the benchmark and docker-compose.

It speaks both APIs a worker may have: OpenAI-compatible (`/v1/...`, with SSE streaming) and an
OperateGPT-style template API (`/api/generate`, answer at `data.items[].attributes.answer`). It
answers `[<name>] <prompt>`, so a caller can tell who answered what. Beside chat, completions and
embeddings it answers every other endpoint in its real API's shape: the Responses API (stored
responses that `previous_response_id` continues, typed SSE events, background responses that
can be cancelled), images (generations, and edits as a form upload), audio (transcriptions and
translations of a form upload, speech as a binary stream), rerank and score (vLLM's),
moderations, and a Stable Diffusion WebUI style `/sdapi/v1/txt2img` (`{"images": ["<base64>"]}`)
for template workers. A raw ASGI app, so that it is never the bottleneck of a benchmark. Its
behaviour (latency, failures, stalls) can be changed while it runs with `POST /_control`;
`GET /_stats` counts what it served.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import random
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, AnyStr

import orjson
from python_multipart.multipart import parse_form
from starlette.types import ASGIApp, Receive, Scope, Send

from balancer.forwarding import sse

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", sse.CONTENT_TYPE.encode()), (b"cache-control", b"no-cache")]
_PROMETHEUS = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]


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
    metrics: str = ""
    """Served as Prometheus text at GET /metrics, as an engine's own (empty: no /metrics)."""
    chunk_split: int = 0
    """Write only this many bytes of each event, the rest with the next one, as a busy
    connection delivers them: no read then ends with a whole event (0: an event a write)."""


class FakeWorker:
    def __init__(self, behaviour: Behaviour | None = None, *, seed: int | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.served: dict[str, int] = {}
        self.responses: dict[str, dict[str, Any]] = {}
        """Stored responses (Responses API), by id."""
        self._background: dict[str, dict[str, Any]] = {}
        """Background responses still `queued`, by id: the response each becomes once done."""
        self._made = 0
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
        if path == "/metrics" and method == "GET" and b.metrics:
            await send({"type": "http.response.start", "status": 200, "headers": _PROMETHEUS})
            await send({"type": "http.response.body", "body": b.metrics.encode()})
            return
        if path == "/_stats":
            stats = {"name": b.name, "served": self.served, "peak_inflight": self.peak_inflight}
            await _reply(send, 200, stats)
            return
        if path.startswith("/v1/responses/"):
            await self._stored(method, path.removeprefix("/v1/responses/"), send)
            return
        handler = _ROUTES.get((method, path))
        if handler is None:
            await _reply(send, 404, {"error": {"message": f"no route {method} {path}"}})
            return
        content_type = dict(scope["headers"]).get(b"content-type", b"")
        try:
            if content_type.startswith(b"multipart/form-data"):
                request = _form(content_type, body)
            else:
                request = orjson.loads(body) if body else {}
        except (orjson.JSONDecodeError, ValueError) as exc:
            await _reply(send, 400, {"error": {"message": f"body is not JSON or a form: {exc}"}})
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
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
            await _invalid(send, "messages is required")
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
        pieces = _pieces(text, b.chunks)
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
        await _text_reply(send, text)

    async def _generate(self, request: dict[str, Any], send: Send) -> None:
        prompt = request.get("input", request.get("prompt", ""))
        text = self.answer(prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode())
        await _reply(
            send, 200, {"data": {"items": [{"attributes": {"answer": text, "request": request}}]}}
        )

    async def _responses(self, request: dict[str, Any], send: Send) -> None:
        """The Responses API: stored responses, plain or as typed SSE events."""
        previous = request.get("previous_response_id")
        if previous is not None and (not isinstance(previous, str) or not previous):
            await _reply(
                send,
                400,
                {
                    "error": {
                        "message": "Invalid 'previous_response_id': expected a response id.",
                        "type": "invalid_request_error",
                        "param": "previous_response_id",
                        "code": "invalid_value",
                    }
                },
            )
            return
        if previous is not None and previous not in self.responses:
            await _reply(
                send,
                404,
                {
                    "error": {
                        "message": f"Previous response with id '{previous}' not found.",
                        "type": "invalid_request_error",
                        "param": "previous_response_id",
                        "code": "previous_response_not_found",
                    }
                },
            )
            return
        given = request.get("input", "")
        prompt = given if isinstance(given, str) else orjson.dumps(given).decode()
        text = self.answer(prompt) + (f" (after {previous})" if previous else "")
        self._made += 1
        response_id = f"resp_{self.behaviour.name}_{self._made}"
        model = request.get("model", "fake-model")
        usage = _usage(prompt, text)
        completed = _response_object(response_id, model, text, "completed", previous)
        completed["usage"] = {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        if request.get("background") is True and not request.get("stream"):
            # Answered at once, `queued`; it is done when first read again (the fake works
            # when polled, so a test needs no clock), unless it is cancelled before.
            completed["background"] = True
            queued = {**completed, "status": "queued", "output": [], "usage": None}
            self._background[response_id] = completed
            self.responses[response_id] = {**queued, "input": given}
            await self._answer(send, queued)
            return
        if request.get("store", True) is not False:
            self.responses[response_id] = {**completed, "input": given}
        if not request.get("stream"):
            await self._answer(send, completed)
            return
        await self._response_stream(send, response_id, model, text, completed, previous)

    async def _stored(self, method: str, rest: str, send: Send) -> None:
        """A stored response: GET it or its input items, DELETE it, or cancel it (POST
        `/cancel`, a background response only)."""
        response_id, _, part = rest.partition("/")
        stored = self.responses.get(response_id)
        known = {("GET", ""), ("GET", "input_items"), ("DELETE", ""), ("POST", "cancel")}
        if stored is None or (method, part) not in known:
            message = f"No response found with id '{response_id}'."
            await _reply(
                send, 404, {"error": {"message": message, "type": "invalid_request_error"}}
            )
            return
        if method == "POST":
            await self._cancel(response_id, stored, send)
            return
        done = self._background.pop(response_id, None)
        if done is not None:
            stored = self.responses[response_id] = {**done, "input": stored["input"]}
        if method == "DELETE":
            del self.responses[response_id]
            await _reply(send, 200, {"id": response_id, "object": "response", "deleted": True})
        elif part == "input_items":
            given = stored["input"]
            item = {"id": f"in_{response_id}", "type": "message", "role": "user"}
            content = [{"type": "input_text", "text": given if isinstance(given, str) else ""}]
            await _reply(send, 200, {"object": "list", "data": [{**item, "content": content}]})
        else:
            await _reply(send, 200, {k: v for k, v in stored.items() if k != "input"})

    async def _cancel(self, response_id: str, stored: dict[str, Any], send: Send) -> None:
        """As OpenAI's: a background response not yet done is `cancelled` (and cancelling it
        again answers the same); any other is a 400."""
        if self._background.pop(response_id, None) is not None:
            stored["status"] = "cancelled"
        if stored["status"] == "cancelled":
            await _reply(send, 200, {k: v for k, v in stored.items() if k != "input"})
            return
        kind = "completed" if stored.get("background") else "synchronous"
        error = {
            "message": f"Cannot cancel a {kind} response.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
        await _reply(send, 400, {"error": error})

    async def _response_stream(
        self,
        send: Send,
        response_id: str,
        model: str,
        text: str,
        completed: dict[str, Any],
        previous: str | None,
    ) -> None:
        b = self.behaviour
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        writer = _StreamWriter(send, b.chunk_split)
        sequence = iter(range(1_000_000))
        item_id = f"msg_{response_id}"

        def event(kind: str, **fields: Any) -> bytes:
            document = {"type": kind, "sequence_number": next(sequence), **fields}
            return b"event: " + kind.encode() + b"\n" + self._event(self._json(document))

        started = _response_object(response_id, model, "", "in_progress", previous)
        item = {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant"}
        part = {"type": "output_text", "text": "", "annotations": []}
        place = {"item_id": item_id, "output_index": 0, "content_index": 0}
        await writer.write(
            event("response.created", response=started)
            + event("response.in_progress", response=started)
            + event("response.output_item.added", output_index=0, item={**item, "content": []})
            + event("response.content_part.added", **place, part=part)
        )
        for index, piece in enumerate(_pieces(text, b.chunks)):
            if index == b.break_after:
                raise ConnectionAbortedError(f"{b.name} breaks the stream on purpose")
            if index and b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
            await writer.write(event("response.output_text.delta", **place, delta=piece))
        done_part = {**part, "text": text}
        await writer.write(
            event("response.output_text.done", **place, text=text)
            + event("response.content_part.done", **place, part=done_part)
            + event(
                "response.output_item.done",
                output_index=0,
                item={**item, "status": "completed", "content": [done_part]},
            )
            + event("response.completed", response=completed),
            last=True,
        )

    async def _images(self, request: dict[str, Any], send: Send) -> None:
        prompt = str(request.get("prompt", ""))
        source = request.get("image")
        seen = f" edited {source['filename']} ({len(source['content'])} bytes)" if source else ""
        picture = _picture(self.answer(prompt) + seen)
        n = request.get("n") or 1
        await self._answer(
            send,
            {
                "created": int(time.time()),
                "data": [{"b64_json": picture, "revised_prompt": prompt}] * int(n),
                "usage": {
                    "input_tokens": len(prompt.split()) or 1,
                    "output_tokens": 272,
                    "total_tokens": (len(prompt.split()) or 1) + 272,
                },
            },
        )

    async def _transcription(self, request: dict[str, Any], send: Send) -> None:
        audio = request.get("file")
        if not isinstance(audio, dict):
            await _invalid(send, "file is required")
            return
        text = self.answer(f"heard {len(audio['content'])} bytes of {audio['filename']}")
        if request.get("response_format") == "text":
            await _text_reply(send, text)
            return
        if request.get("stream") == "true":
            # Typed events, as OpenAI's streamed transcriptions are: deltas, then the text
            # with its usage.
            await send({"type": "http.response.start", "status": 200, "headers": _SSE})
            writer = _StreamWriter(send, self.behaviour.chunk_split)
            for piece in _pieces(text, self.behaviour.chunks):
                delta = {"type": "transcript.text.delta", "delta": piece}
                await writer.write(self._event(self._json(delta)))
            prompt_tokens = len(audio["content"]) // 100 or 1
            usage = {"type": "tokens", "input_tokens": prompt_tokens, "output_tokens": 5}
            usage["total_tokens"] = prompt_tokens + 5
            done = {"type": "transcript.text.done", "text": text, "usage": usage}
            await writer.write(self._event(self._json(done)), last=True)
            return
        await self._answer(
            send, {"text": text, "usage": {"type": "duration", "seconds": 1}, "logprobs": None}
        )

    async def _speech(self, request: dict[str, Any], send: Send) -> None:
        """Audio as the real API sends it: binary, in chunks, `chunks` of them."""
        b = self.behaviour
        audio = b"ID3" + self.answer(str(request.get("input", ""))).encode() * 64
        kind = {"wav": b"audio/wav", "pcm": b"audio/pcm", "opus": b"audio/opus"}.get(
            str(request.get("response_format")), b"audio/mpeg"
        )
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]}
        )
        pieces = _pieces(audio, b.chunks)
        for index, chunk in enumerate(pieces):
            if index == b.break_after:
                raise ConnectionAbortedError(f"{b.name} breaks the stream on purpose")
            if index and b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
            more = index < len(pieces) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    async def _rerank(self, request: dict[str, Any], send: Send) -> None:
        """vLLM's rerank answer (Jina's shape; Cohere's v2 is the same results)."""
        query = str(request.get("query", ""))
        documents = request.get("documents") or []
        results: list[dict[str, Any]] = [
            {
                "index": index,
                "document": {"text": _document_text(document)},
                "relevance_score": _similarity(query, _document_text(document)),
            }
            for index, document in enumerate(documents)
        ]
        results.sort(key=lambda r: -float(r["relevance_score"]))
        if request.get("top_n"):
            results = results[: int(request["top_n"])]
        tokens = len(query.split()) + sum(len(_document_text(d).split()) for d in documents)
        await self._answer(
            send,
            {
                "id": f"rerank-{self.behaviour.name}",
                "model": request.get("model", "fake-model"),
                "usage": {"total_tokens": tokens or 1},
                "results": results,
            },
        )

    async def _score(self, request: dict[str, Any], send: Send) -> None:
        first, second = request.get("text_1", ""), request.get("text_2", "")
        seconds = second if isinstance(second, list) else [second]
        firsts = first if isinstance(first, list) else [first] * len(seconds)
        data = [
            {"index": i, "object": "score", "score": _similarity(str(a), str(b))}
            for i, (a, b) in enumerate(zip(firsts, seconds, strict=False))
        ]
        await self._answer(
            send,
            {
                "id": f"score-{self.behaviour.name}",
                "object": "list",
                "created": int(time.time()),
                "model": request.get("model", "fake-model"),
                "data": data,
                "usage": {"prompt_tokens": len(data), "total_tokens": len(data)},
            },
        )

    async def _moderations(self, request: dict[str, Any], send: Send) -> None:
        await self._answer(
            send,
            {
                "id": f"modr-{self.behaviour.name}",
                "model": request.get("model", "fake-model"),
                "results": [{"flagged": False, "categories": {}, "category_scores": {}}],
            },
        )

    async def _txt2img(self, request: dict[str, Any], send: Send) -> None:
        """Stable Diffusion WebUI's txt2img: images as base64, no OpenAI anywhere."""
        prompt = str(request.get("prompt", ""))
        await _reply(
            send,
            200,
            {
                "images": [_picture(self.answer(prompt))],
                "parameters": request,
                "info": orjson.dumps({"prompt": prompt, "seed": 1}).decode(),
            },
        )


def _response_object(
    response_id: str, model: str, text: str, status: str, previous: str | None
) -> dict[str, Any]:
    output = []
    if text:
        output.append(
            {
                "id": f"msg_{response_id}",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": output,
        "previous_response_id": previous,
        "background": False,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": None,
    }


def _pieces(text: AnyStr, chunks: int) -> list[AnyStr]:
    """`text` (or audio) cut into `chunks` pieces as even as can be; one empty piece if empty."""
    step = -(-len(text) // max(1, chunks)) or 1
    return [text[i : i + step] for i in range(0, len(text), step)] or [text[:0]]


def _picture(text: str) -> str:
    """A "picture" that says who made it of what: base64, as image APIs send them."""
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + text.encode()).decode()


def _document_text(document: Any) -> str:
    if isinstance(document, dict):
        return str(document.get("text", ""))
    return str(document)


def _similarity(a: str, b: str) -> float:
    words_a, words_b = set(a.lower().split()), set(b.lower().split())
    if not words_a or not words_b:
        return 0.0
    return round(len(words_a & words_b) / len(words_a | words_b), 4)


def _form(content_type: bytes, body: bytes) -> dict[str, Any]:
    """A multipart/form-data body: text fields as strings, files as {filename, content}."""
    found: dict[str, Any] = {}

    def on_field(field: Any) -> None:
        found[field.field_name.decode()] = (field.value or b"").decode()

    def on_file(file: Any) -> None:
        file.file_object.seek(0)
        found[file.field_name.decode()] = {
            "filename": (file.file_name or b"").decode(),
            "content": file.file_object.read(),
        }

    headers = {"Content-Type": content_type, "Content-Length": str(len(body)).encode()}
    parse_form(headers, io.BytesIO(body), on_field, on_file)
    return found


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
    ("POST", "/v1/responses"): FakeWorker._responses,
    ("POST", "/v1/images/generations"): FakeWorker._images,
    ("POST", "/v1/images/edits"): FakeWorker._images,
    ("POST", "/v1/audio/transcriptions"): FakeWorker._transcription,
    ("POST", "/v1/audio/translations"): FakeWorker._transcription,
    ("POST", "/v1/audio/speech"): FakeWorker._speech,
    ("POST", "/v1/rerank"): FakeWorker._rerank,
    ("POST", "/v2/rerank"): FakeWorker._rerank,
    ("POST", "/v1/score"): FakeWorker._score,
    ("POST", "/v1/moderations"): FakeWorker._moderations,
    ("POST", "/sdapi/v1/txt2img"): FakeWorker._txt2img,
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


async def _invalid(send: Send, message: str) -> None:
    """A 400 in OpenAI's shape, as real servers answer a malformed request: a 500 would charge
    the worker for the caller's mistake (and a fuzzer's requests could eject it)."""
    await _reply(send, 400, {"error": {"message": message, "type": "invalid_request_error"}})


async def _text_reply(send: Send, text: str) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": text.encode()})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def serve(app: ASGIApp, host: str, port: int) -> None:
    """Serve one fake worker (a `FakeWorker` or an `EngineWorker`) until interrupted (uvloop +
    httptools, no access log)."""
    import uvicorn

    uvicorn.run(
        app,
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
