"""A steady load on a balancer process: client threads sending one request after another until
stopped, every answer kept (no client retries: a lost request shows)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import httpx

Body = Mapping[str, Any] | Callable[[int], Mapping[str, Any]]
"""A request's JSON body, or a function of the client's request count (0, 1, ...) giving it."""


class Answer(NamedTuple):
    status: int  # 0: no answer (connection lost, timed out)
    text: str  # the body, or the error


def chat(model: str, *, stream: bool = False) -> dict[str, Any]:
    """An OpenAI chat completion request (for /v1/chat/completions, the default path)."""
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


class Load:
    """`clients` threads posting `body` to `path` at `url`, one request after another, until
    stopped or `limit` answers are in; a request not answered within `timeout` seconds is
    answered 0."""

    def __init__(
        self,
        url: str,
        body: Body,
        *,
        path: str = "/v1/chat/completions",
        clients: int = 4,
        limit: int | None = None,
        timeout: float = 30,
    ) -> None:
        self.url, self.body, self.path, self.limit, self.timeout = url, body, path, limit, timeout
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    @property
    def statuses(self) -> list[int]:
        return [answer.status for answer in self.answers]

    @property
    def failures(self) -> list[str]:
        """What every answer but a 200 said."""
        return [answer.text for answer in self.answers if answer.status != 200]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def add_clients(self, clients: int) -> None:
        for _ in range(clients):
            thread = threading.Thread(target=self._run, daemon=True)
            self._threads.append(thread)
            thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=self.timeout) as client:
            sent = 0
            while not self._stop.is_set() and (
                self.limit is None or len(self.answers) < self.limit
            ):
                body = self.body(sent) if callable(self.body) else self.body
                sent += 1
                try:
                    reply = client.post(self.path, json=body)
                    self.answers.append(Answer(reply.status_code, reply.text))
                except httpx.HTTPError as exc:
                    self.answers.append(Answer(0, repr(exc)))

    def wait_for(self, answers: int, within: float = 10.0) -> None:
        """Until `answers` more answers are in; fails if not within `within` seconds."""
        deadline = time.monotonic() + within
        start = len(self.answers)
        while len(self.answers) < start + answers:
            assert time.monotonic() < deadline, f"{answers} answers not within {within}s"
            time.sleep(0.02)
