"""A named signal: receivers called in order, on the event loop, with one frozen parameter
object (aiohttp's `aiosignal`, synchronous). `balancer.events` lists every signal of the
balancer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

P = TypeVar("P")


class Signal(Generic[P]):
    __slots__ = ("_receivers", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._receivers: list[Callable[[P], None]] = []

    def connect(self, receiver: Callable[[P], None]) -> None:
        self._receivers.append(receiver)

    def __bool__(self) -> bool:
        return bool(self._receivers)

    def send(self, params: P) -> None:
        for receiver in self._receivers:
            receiver(params)

    def __repr__(self) -> str:
        return f"<Signal {self.name}: {len(self._receivers)} receivers>"
