"""What a probe sends, cheapest first (on a fake client), and how the real client behaves with
workers that never answer, trickle, or close idle connections (small servers on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import pytest

from balancer.registry import Worker, parse_spec
from probes.checks import Prober, ProbeResult
from probes.client import AiohttpProbeClient, TooLarge, Unreachable

pytestmark = pytest.mark.anyio

Answer = int | BaseException | Callable[[], Awaitable[int]]


@dataclass
class Sent:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None


@dataclass
class FakeClient:
    """Answers each URL as told: a status, an exception to raise, or a coroutine to await."""

    answers: dict[str, Answer] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    bodies: dict[str, tuple[int, bytes] | BaseException] = field(default_factory=dict)
    """What GETs with a body to read answer (404 if not here)."""

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None
    ) -> int:
        self.sent.append(Sent(method, url, dict(headers), body))
        answer = self.answers.get(url, 404)
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return await answer()
        return answer

    async def get(self, url: str, *, headers: Mapping[str, str], limit: int) -> tuple[int, bytes]:
        self.sent.append(Sent("GET", url, dict(headers), None))
        answer = self.bodies.get(url, (404, b"Not Found"))
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def aclose(self) -> None:
        pass

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.sent]


def worker(**fields: object) -> Worker:
    return Worker(parse_spec({"model_name": "m", **fields}))


OPENAI = {"api": "openai", "req_url_template": "http://h:9/v1"}
TEMPLATE = {"req_url_template": "http://h:9/api/generate", "body": {"input": "{USER_PROMPT}"}}


def template_worker(url: str) -> Worker:
    return worker(req_url_template=url, body={"input": "{USER_PROMPT}"})


async def probe(client: FakeClient, w: Worker, timeout: float = 1.0) -> ProbeResult:
    return await Prober(client, timeout=timeout).probe(w)


async def test_health_url_wins_when_given() -> None:
    client = FakeClient({"http://h:9/ready": 200})
    assert (await probe(client, worker(**OPENAI, health_url="http://h:9/ready"))).ok
    assert client.urls == ["http://h:9/ready"]


async def test_openai_workers_are_asked_for_their_models() -> None:
    client = FakeClient({"http://h:9/v1/models": 200})
    result = await probe(client, worker(**OPENAI))
    assert result.ok and result.status == 200
    assert client.urls == ["http://h:9/v1/models"]


async def test_openai_workers_without_models_fall_back_to_root_health() -> None:
    client = FakeClient({"http://h:9/v1/models": 404, "http://h:9/health": 200})
    assert (await probe(client, worker(**OPENAI))).ok
    assert client.urls == ["http://h:9/v1/models", "http://h:9/health"]


@pytest.mark.parametrize("status", [401, 403, 500])
async def test_an_openai_worker_refusing_its_key_fails_its_probe_with_no_fallback(
    status: int,
) -> None:
    """With its configured key the worker cannot serve: it is not healthy, however alive."""
    client = FakeClient({"http://h:9/v1/models": status, "http://h:9/health": 200})
    result = await probe(client, worker(**OPENAI))
    assert not result.ok and result.status == status
    assert client.urls == ["http://h:9/v1/models"]


async def test_no_fallback_when_the_server_does_not_answer() -> None:
    client = FakeClient({"http://h:9/v1/models": Unreachable("cannot connect: refused")})
    result = await probe(client, worker(**OPENAI))
    assert not result.ok and result.status is None
    assert result.error == "GET http://h:9/v1/models: cannot connect: refused"
    assert client.urls == ["http://h:9/v1/models"]


@pytest.mark.parametrize(
    ("status", "alive"), [(200, True), (404, True), (405, True), (500, False), (503, False)]
)
async def test_template_workers_are_alive_if_their_origin_answers_below_500(
    status: int, alive: bool
) -> None:
    client = FakeClient({"http://h:9/": status})
    result = await probe(client, worker(**TEMPLATE))
    assert result.ok is alive
    assert result.status == status


async def test_probes_carry_the_workers_headers() -> None:
    client = FakeClient({"http://h:9/v1/models": 200})
    await probe(client, worker(**OPENAI, header={"Authorization": "Bearer up"}))
    assert client.sent[0].headers["Authorization"] == "Bearer up"


async def test_a_probe_that_outlasts_its_timeout_fails() -> None:
    async def never() -> int:
        await asyncio.Event().wait()
        return 200

    client = FakeClient({"http://h:9/": never})
    result = await probe(client, worker(**TEMPLATE), timeout=0.01)
    assert not result.ok and result.status is None
    assert result.error == "GET http://h:9/: timed out (probe timeout 0.01 s)"


async def test_inference_probes_send_one_token_requests() -> None:
    client = FakeClient({"http://h:9/v1/chat/completions": 200})
    assert (await probe(client, worker(**OPENAI, probe="inference", upstream_model="up"))).ok
    [sent] = client.sent
    assert sent.method == "POST"
    assert sent.body is not None
    assert b'"max_tokens":1' in sent.body and b'"model":"up"' in sent.body
    assert sent.headers["Content-Type"] == "application/json"


async def test_template_inference_probes_fill_the_template() -> None:
    client = FakeClient({"http://h:9/api/generate": 200})
    assert (await probe(client, worker(**TEMPLATE, probe="inference"))).ok
    assert client.sent[0].body == b'{"input":"ping"}'


# The real client, against small servers on loopback.

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    """A loopback server running `handler` per connection; yields its origin."""
    tasks: set[asyncio.Task[None]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the prober gave up on us
        finally:
            writer.close()

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 keep-alive: 200 with a small body to every request on the connection."""
    while True:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()


async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers one request as if keeping the connection, then closes it (an idle timeout)."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()


async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers 200 at once, then its body a byte every 50 ms, for ever."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    while True:
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(0.05)


@pytest.fixture
async def client() -> AsyncIterator[AiohttpProbeClient]:
    real = AiohttpProbeClient()
    yield real
    await real.aclose()


async def test_the_real_client_reads_the_answer_and_returns_its_status(
    client: AiohttpProbeClient,
) -> None:
    async with serve(answer_ok) as url:
        assert await client.request("GET", url + "/", headers={}, body=None) == 200
        # Kept alive: the second probe reuses the connection.
        assert await client.request("GET", url + "/", headers={}, body=None) == 200


async def test_a_refused_connection_is_unreachable(client: AiohttpProbeClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(Unreachable, match="cannot connect"):
            await client.request("GET", f"http://127.0.0.1:{port}/", headers={}, body=None)


async def test_an_idle_connection_the_worker_closed_is_not_a_failed_probe(
    client: AiohttpProbeClient,
) -> None:
    async with serve(answer_once) as url:
        for _ in range(3):
            assert await client.request("GET", url + "/", headers={}, body=None) == 200


async def test_a_trickled_answer_is_cut_off_at_the_probe_timeout(
    client: AiohttpProbeClient,
) -> None:
    async with serve(trickle) as url:
        result = await asyncio.wait_for(
            Prober(client, timeout=0.3).probe(template_worker(url + "/gen")), 5
        )
    assert not result.ok
    assert result.error == f"GET {url}/: timed out (probe timeout 0.3 s)"


async def test_probes_of_a_worker_never_wait_for_connections_held_by_others(
    client: AiohttpProbeClient,
) -> None:
    """150 probes hanging on workers that never answer leave the next one free to go."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(0)  # never accepted: connections hang in the backlog or in SYN
        dead = f"http://127.0.0.1:{hole.getsockname()[1]}"
        prober = Prober(client, timeout=30.0)
        hanging = [
            asyncio.create_task(prober.probe(template_worker(f"{dead}/w{i}"))) for i in range(150)
        ]
        try:
            await asyncio.sleep(0.1)  # every one of them is connecting by now
            async with serve(answer_ok) as url:
                result = await asyncio.wait_for(prober.probe(template_worker(url + "/")), 10)
            assert result.ok
            assert not any(task.done() for task in hanging)
        finally:
            for task in hanging:
                task.cancel()
            await asyncio.gather(*hanging, return_exceptions=True)


# Engine signals: an OpenAI worker's server's own /metrics, read with the probe.

VLLM_BUSY = (
    b"# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
    b"# TYPE vllm:num_requests_waiting gauge\n"
    b'vllm:num_requests_waiting{engine="0",model_name="m"} 30.0\n'
    b'vllm:num_requests_running{engine="0",model_name="m"} 8.0\n'
    b'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5\n'
)


async def test_an_openai_workers_engine_load_is_read_from_its_origins_metrics() -> None:
    client = FakeClient(bodies={"http://h:9/metrics": (200, VLLM_BUSY)})
    w = worker(**OPENAI, header={"Authorization": "Bearer k"})
    load = await Prober(client).read_engine(w)
    assert load is not None and load.queue_depth == 38 and load.kv_cache_usage == 0.5
    assert client.urls == ["http://h:9/metrics"]
    assert client.sent[0].headers["Authorization"] == "Bearer k"


async def test_template_workers_are_not_asked_for_metrics() -> None:
    client = FakeClient()
    assert await Prober(client).read_engine(worker(**TEMPLATE)) is None
    assert client.urls == []


@pytest.mark.parametrize(
    "answer",
    [
        (404, b"Not Found"),
        (200, b"<html>hello</html>"),
        (401, b"no key"),
        TooLarge("answer larger than 4194304 bytes"),
    ],
)
async def test_a_worker_without_engine_metrics_is_not_asked_again_for_a_while(
    answer: tuple[int, bytes] | BaseException,
) -> None:
    client = FakeClient(bodies={"http://h:9/metrics": answer})
    prober, w = Prober(client), worker(**OPENAI)
    assert await prober.read_engine(w) is None
    assert await prober.read_engine(w) is None
    assert client.urls == ["http://h:9/metrics"]
    prober.forget(w.id)  # removed and registered again: asked afresh
    await prober.read_engine(w)
    assert len(client.urls) == 2


@pytest.mark.parametrize(
    "answer", [Unreachable("cannot connect: refused"), (503, b"busy"), (500, b"")]
)
async def test_a_metrics_read_that_fails_says_unknown_and_is_tried_next_time(
    answer: tuple[int, bytes] | BaseException,
) -> None:
    client = FakeClient(bodies={"http://h:9/metrics": answer})
    prober, w = Prober(client), worker(**OPENAI)
    assert await prober.read_engine(w) is None
    assert await prober.read_engine(w) is None
    assert len(client.urls) == 2


async def test_a_metrics_read_that_hangs_ends_at_the_probe_timeout() -> None:
    class Hanging(FakeClient):
        async def get(
            self, url: str, *, headers: Mapping[str, str], limit: int
        ) -> tuple[int, bytes]:
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

    assert await Prober(Hanging(), timeout=0.05).read_engine(worker(**OPENAI)) is None


async def test_the_real_client_reads_a_metrics_body_and_refuses_one_too_large(
    client: AiohttpProbeClient,
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = VLLM_BUSY * 3
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        status, body = await client.get(f"http://127.0.0.1:{port}/metrics", headers={}, limit=4096)
        assert status == 200 and body == VLLM_BUSY * 3
        with pytest.raises(TooLarge, match="larger than 100 bytes"):
            await client.get(f"http://127.0.0.1:{port}/metrics", headers={}, limit=100)
