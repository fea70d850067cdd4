"""The real transport bounds a whole answer, counted after decompression, against a raw worker
on 127.0.0.1; a stream is not bounded. How the bound shows to clients: tests/e2e/test_limits.py."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from balancer.forwarding.transport import AiohttpTransport, TransportError, UpstreamResponse
from tests.e2e.rawworker import Answer, raw_worker

pytestmark = pytest.mark.anyio

LIMIT = 1000


@asynccontextmanager
async def answer_to(answer: Answer) -> AsyncIterator[UpstreamResponse]:
    """The transport's response to a request the raw worker answers with `answer`."""
    transport = AiohttpTransport(max_body_bytes=LIMIT)
    with raw_worker(lambda _: answer) as worker:
        try:
            response = await transport.request(
                "POST", f"{worker.url}/v1/chat/completions", headers={}, body=b"{}"
            )
            try:
                yield response
            finally:
                response.close()
        finally:
            await transport.close()


async def read(answer: Answer) -> bytes:
    async with answer_to(answer) as response:
        return await response.read()


async def test_an_answer_of_exactly_the_limit_is_read() -> None:
    assert await read(Answer(body=b"x" * LIMIT)) == b"x" * LIMIT


async def test_an_answer_one_byte_over_the_limit_is_a_too_large_failure() -> None:
    with pytest.raises(TransportError) as raised:
        await read(Answer(body=b"x" * (LIMIT + 1)))
    assert raised.value.kind == "too_large"
    assert raised.value.message == (
        f"the answer is larger than {LIMIT} bytes (BALANCER_MAX_UPSTREAM_BODY_BYTES)"
    )


async def test_a_compressed_answer_is_counted_after_decompression() -> None:
    small = gzip.compress(b"y" * LIMIT)
    assert await read(Answer(headers={"Content-Encoding": "gzip"}, body=small)) == b"y" * LIMIT
    inflating = gzip.compress(b"y" * (LIMIT + 1))
    assert len(inflating) < LIMIT
    with pytest.raises(TransportError) as raised:
        await read(Answer(headers={"Content-Encoding": "gzip"}, body=inflating))
    assert raised.value.kind == "too_large"


async def test_an_answer_that_never_ends_stops_at_the_limit() -> None:
    with pytest.raises(TransportError) as raised:
        await read(Answer(body=b"{", endless=b"z" * 100))
    assert raised.value.kind == "too_large"


async def test_a_stream_is_not_bounded() -> None:
    async with answer_to(Answer(body=b"data: x\n\n" * LIMIT)) as response:
        received = b"".join([chunk async for chunk in response.chunks()])
    assert received == b"data: x\n\n" * LIMIT
