"""The HTTP protocol sends a response's headers with the start of its body, and nothing else
waits: stream chunks go out as they come, and closing sends what was held first."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from balancer.server import CoalescingTransport

pytestmark = pytest.mark.anyio


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 1234) if name == "peername" else None


def coalescing() -> tuple[CoalescingTransport, RecordingTransport]:
    real = RecordingTransport()
    return CoalescingTransport(cast(asyncio.Transport, real), asyncio.get_running_loop()), real


async def test_headers_and_body_written_in_one_step_go_out_as_one_write() -> None:
    transport, real = coalescing()
    transport.hold_next_write()
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"{}")
    assert real.writes == []
    assert transport.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\n{}")
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]


async def test_held_headers_go_out_alone_when_no_body_follows_in_that_step() -> None:
    transport, real = coalescing()
    transport.hold_next_write()
    transport.write(b"headers")
    await asyncio.sleep(0)
    assert real.writes == [b"headers"]


async def test_stream_chunks_after_the_headers_are_written_at_once() -> None:
    transport, real = coalescing()
    transport.hold_next_write()
    transport.write(b"headers")
    await asyncio.sleep(0)
    transport.write(b"data: 1\n\n")
    assert real.writes == [b"headers", b"data: 1\n\n"]


async def test_closing_sends_what_was_held_first() -> None:
    transport, real = coalescing()
    transport.hold_next_write()
    transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    transport.close()
    assert real.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"]
    assert real.closed
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"]  # not twice


async def test_an_aborted_connection_drops_what_was_held() -> None:
    transport, real = coalescing()
    transport.hold_next_write()
    transport.write(b"headers")
    transport.abort()
    await asyncio.sleep(0)
    assert real.writes == []
    assert real.aborted


async def test_everything_else_is_the_real_transports() -> None:
    transport, _ = coalescing()
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1234)
