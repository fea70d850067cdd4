"""A worker written on raw sockets, for what a well-behaved server never does: trickle its
answer, send odd headers, or drop a kept-alive connection the moment a request arrives on it.
It runs on its own thread and event loop on 127.0.0.1, and speaks just enough HTTP/1.1."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

from balancer.fakes.processes import HOST, free_port


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    trickle: float = 0.0
    """Seconds between the body's bytes (the headers go at once)."""
    endless: bytes = b""
    """Sent (chunked) again and again after the body, until the client hangs up; `trickle`
    is then the pause between two."""


def completion(text: str) -> bytes:
    return orjson.dumps(
        {
            "id": "raw",
            "object": "chat.completion",
            "model": "raw",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


Handler = Callable[[int], Answer]
"""Given how many inference requests came before, what to answer."""


def back_off_once(retry_after: str) -> Handler:
    """A 429 with this Retry-After to the first request, then answers ("back")."""

    def answer(n: int) -> Answer:
        if n == 0:
            return Answer(429, headers={"Retry-After": retry_after}, body=b"{}")
        return Answer(body=completion("back"))

    return answer


class RawWorker:
    def __init__(
        self,
        handler: Handler,
        *,
        one_request_per_connection: bool = False,
        drop_after: float = 0.0,
    ) -> None:
        self.handler = handler
        self.one_request_per_connection = one_request_per_connection
        self.drop_after = drop_after
        """With one_request_per_connection: seconds of "work" before the connection drops (a
        crash mid-generation), instead of at once (a stale kept-alive connection)."""
        self.port = free_port()
        self.requests = 0
        """Inference requests answered."""
        self.dropped = 0
        """Requests that arrived on a kept-alive connection and were dropped unanswered."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _listen(self) -> None:
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server = await asyncio.start_server(self._accepted, HOST, self.port)

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Kept from the moment of accepting, so that every socket is closed at the end, even
        # one whose handler never got to run.
        self._writers.add(writer)
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _close(self) -> None:
        self._server.close()
        # A connection accepted just before is handed to _accepted on a later turn of the loop:
        # let it arrive, so that its socket is closed with the others (the balancer's probes,
        # which also read /metrics, may be connecting right now).
        for _ in range(3):
            await asyncio.sleep(0)
        for writer in self._writers:
            writer.transport.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method = lines[0].split(" ", 1)[0]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                if length:
                    await reader.readexactly(length)
                if self.one_request_per_connection and served:
                    if self.drop_after:
                        await asyncio.sleep(self.drop_after)
                    # Gone the moment the request arrives, as a server whose keep-alive timer
                    # fired: nothing of the request reached any application.
                    self.dropped += 1
                    return
                served += 1
                if method == "GET":
                    await self._write(writer, Answer(200, body=b'{"status":"ok"}'))
                    continue
                answer = self.handler(self.requests)
                self.requests += 1
                await self._write(writer, answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _write(self, writer: asyncio.StreamWriter, answer: Answer) -> None:
        framing = (
            {"Transfer-Encoding": "chunked"}
            if answer.endless
            else {"Content-Length": str(len(answer.body))}
        )
        headers = {"Content-Type": "application/json", **framing, **answer.headers}
        head = f"HTTP/1.1 {answer.status} X\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()
        )
        writer.write(head.encode("latin-1") + b"\r\n")
        if answer.endless:
            for chunk in itertools.chain([answer.body], itertools.repeat(answer.endless)):
                if chunk:
                    writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    await writer.drain()
                await asyncio.sleep(answer.trickle)
        if not answer.trickle:
            writer.write(answer.body)
            await writer.drain()
            return
        await writer.drain()
        for i in range(len(answer.body)):
            await asyncio.sleep(answer.trickle)
            writer.write(answer.body[i : i + 1])
            await writer.drain()


@contextmanager
def raw_worker(handler: Handler, **options: Any) -> Iterator[RawWorker]:
    worker = RawWorker(handler, **options)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
