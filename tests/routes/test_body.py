"""Reading a request body: never more than the limit, read as it arrives; JSON that would fail
later (too deep, not UTF-8) refused at once with a 400."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

from balancer.errors import BadRequest, PayloadTooLarge
from balancer.routes.body import MAX_DEPTH, nests_deeper, read_body, read_json_object

pytestmark = pytest.mark.anyio


class Body:
    """A request whose body arrives in `chunks` (then, if `disconnect`, the client leaves);
    `taken` counts the ASGI messages the reader asked for."""

    def __init__(
        self,
        chunks: Sequence[bytes],
        *,
        content_length: int | None = None,
        disconnect: bool = False,
    ) -> None:
        self.chunks = list(chunks)
        self.disconnect = disconnect
        self.taken = 0
        headers = [] if content_length is None else [(b"content-length", b"%d" % content_length)]
        scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
        self.request = Request(scope, self.receive)

    async def receive(self) -> Message:
        self.taken += 1
        if self.taken > len(self.chunks):
            assert self.disconnect, "read past the end of the body"
            return {"type": "http.disconnect"}
        more = self.taken < len(self.chunks) or self.disconnect
        return {"type": "http.request", "body": self.chunks[self.taken - 1], "more_body": more}


def nested(depth: int) -> bytes:
    """An object whose arrays nest so that the whole document is `depth` levels deep."""
    return b'{"a": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


async def test_a_body_announced_larger_than_the_limit_is_refused_before_any_of_it_is_read() -> None:
    body = Body([b"x" * 101], content_length=101)
    with pytest.raises(PayloadTooLarge) as raised:
        await read_body(body.request, 100)
    assert raised.value.status_code == 413
    assert raised.value.message == (
        "the request body is larger than 100 bytes (BALANCER_MAX_BODY_BYTES)"
    )
    assert body.taken == 0


async def test_a_chunked_body_is_refused_at_its_first_chunk_past_the_limit() -> None:
    body = Body([b"x" * 40] * 10)
    with pytest.raises(PayloadTooLarge):
        await read_body(body.request, 100)
    assert body.taken == 3  # 120 bytes: the other seven chunks are never asked for


async def test_a_body_of_exactly_the_limit_is_read_whole_in_chunks() -> None:
    body = Body([b"a" * 40, b"b" * 40, b"c" * 20])
    assert await read_body(body.request, 100) == b"a" * 40 + b"b" * 40 + b"c" * 20


async def test_a_body_in_one_message_is_returned_as_it_came() -> None:
    chunk = b'{"model": "m"}'
    assert await read_body(Body([chunk], content_length=len(chunk)).request, 100) is chunk


async def test_a_client_leaving_in_the_middle_of_its_body_is_a_client_disconnect() -> None:
    with pytest.raises(ClientDisconnect):
        await read_body(Body([b"{"], disconnect=True).request, 100)


async def test_a_body_of_128_levels_is_taken_and_one_of_129_is_a_400() -> None:
    body, data = await read_json_object(Body([nested(MAX_DEPTH)]).request, 10_000)
    assert body == nested(MAX_DEPTH) and "a" in data
    with pytest.raises(BadRequest) as raised:
        await read_json_object(Body([nested(MAX_DEPTH + 1)]).request, 10_000)
    assert raised.value.message == "the request body nests arrays and objects deeper than 128"


async def test_brackets_inside_strings_are_no_nesting() -> None:
    text = "[{" * 500
    _, data = await read_json_object(Body([orjson.dumps({"text": text})]).request, 10_000)
    assert data == {"text": text}


async def test_many_shallow_brackets_are_no_nesting() -> None:
    """Past the bracket count, the parse is walked: 2,000 messages are 3 levels deep."""
    messages = [{"role": "user", "content": "hi"}] * 2000
    _, data = await read_json_object(
        Body([orjson.dumps({"messages": messages})]).request, 1_000_000
    )
    assert len(data["messages"]) == 2000


@pytest.mark.parametrize(
    "raw",
    [b'{"a": "caf\xe9"}', '{"a": 1}'.encode("utf-16"), b'{"a": "\\ud800"}', b"\xef\xbb\xbf{}"],
    ids=["latin-1", "utf-16", "lone-surrogate", "byte-order-mark"],
)
async def test_a_body_that_is_not_utf8_is_a_400(raw: bytes) -> None:
    with pytest.raises(BadRequest, match=r"^the request body is not valid UTF-8 JSON: "):
        await read_json_object(Body([raw]).request, 10_000)


@pytest.mark.parametrize(
    ("document", "deeper"),
    [({}, False), ([[[]]], False), ({"a": [{"b": []}]}, False), ({"a": [{"b": [[]]}]}, True)],
)
def test_nesting_is_counted_over_objects_and_arrays(document: Any, deeper: bool) -> None:
    assert nests_deeper(document, 4) is deeper


def test_nesting_is_walked_without_recursion() -> None:
    document: list[Any] = []
    for _ in range(100_000):
        document = [document]
    assert nests_deeper(document, MAX_DEPTH)
