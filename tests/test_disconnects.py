"""A client that leaves before its answer started gets its request cancelled, a grace later."""

import asyncio

import pytest
from starlette.types import Message

from balancer.disconnects import Disconnects

pytestmark = pytest.mark.anyio


class Client:
    """An ASGI receive: the body, then nothing until the client leaves."""

    def __init__(self) -> None:
        self.left = asyncio.Event()
        self.sent_body = False

    async def receive(self) -> Message:
        if not self.sent_body:
            self.sent_body = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}


async def request(disconnects: Disconnects, client: Client, *, read_body: bool) -> str:
    watch = disconnects.watch(client.receive)
    try:
        if read_body:
            await watch.receive()
        await asyncio.sleep(10)  # a long generation
        return "answered"
    except asyncio.CancelledError:
        if not watch.gone:
            raise
        return "stopped: the client left"
    finally:
        watch.done()


async def test_a_client_that_leaves_stops_its_request() -> None:
    disconnects, client = Disconnects(grace=0.01), Client()
    task = asyncio.ensure_future(request(disconnects, client, read_body=True))
    await asyncio.sleep(0.05)
    client.left.set()
    assert await asyncio.wait_for(task, 1) == "stopped: the client left"
    await disconnects.close()


async def test_nobody_listens_before_the_body_is_read() -> None:
    """The listener would take the body from the endpoint."""
    disconnects, client = Disconnects(grace=0.01), Client()
    task = asyncio.ensure_future(request(disconnects, client, read_body=False))
    await asyncio.sleep(0.05)
    assert not client.sent_body
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await disconnects.close()
