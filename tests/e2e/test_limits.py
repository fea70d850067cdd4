"""Bounded input, both directions, against `balancer serve` and workers on 127.0.0.1: request
bodies, workers' answers and the capacity queue.

The balancer runs with small limits so each contract shows at once: request bodies of at most
64 KiB, answers of at most 1 MiB, two requests waiting per model. How much memory it took is
read from its peak resident set (`VmHWM`).
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from balancer.fakes.processes import BalancerProcess, WorkerProcess
from tests.e2e.conftest import metric, register_openai, template_registration, unique_model
from tests.e2e.rawworker import Answer, completion, raw_worker

BODY_LIMIT = 64 * 1024
ANSWER_LIMIT = 1024 * 1024
MAX_QUEUE = 2
MIB = 1024 * 1024
JSON = {"Content-Type": "application/json"}
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BalancerProcess]:
    balancer = BalancerProcess(
        tmp_path_factory.mktemp("limits"),
        env={
            "BALANCER_MAX_BODY_BYTES": str(BODY_LIMIT),
            "BALANCER_MAX_UPSTREAM_BODY_BYTES": str(ANSWER_LIMIT),
            "BALANCER_MAX_QUEUE": str(MAX_QUEUE),
            "BALANCER_PROBE_INTERVAL": "30",
        },
    )
    balancer.start()
    try:
        yield balancer
    finally:
        balancer.stop()


def peak_memory(balancer: BalancerProcess) -> int:
    """The most memory the balancer's process has held so far, in bytes."""
    for line in Path(f"/proc/{balancer.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def message_of(reply: httpx.Response) -> str:
    """The error message, in either API's envelope."""
    data = reply.json()
    text: str = data["error"]["message"] if "error" in data else data["msg"]
    return text


# Request bodies


def padded(path: str, size: int) -> bytes:
    """A JSON object of exactly `size` bytes, as `path` expects it (for a model nobody has)."""
    if path == "/v1/chat/completions":
        head = b'{"model": "nobody", "messages": [], "pad": "'
    elif path == "/api/v1/chat/completions":
        head = b'{"model_name": "nobody", "input": "hi", "pad": "'
    else:
        head = b'{"model_name": "nobody", "req_url_template": "http://127.0.0.1:9/x", "pad": "'
    return head + b"x" * (size - len(head) - 2) + b'"}'


INFERENCE_AND_ADMIN = ["/v1/chat/completions", "/api/v1/chat/completions", "/api/server/register"]


@pytest.mark.parametrize("path", INFERENCE_AND_ADMIN)
def test_a_body_over_max_body_bytes_is_a_413_whether_announced_or_chunked(
    limited: BalancerProcess, path: str
) -> None:
    over = padded(path, BODY_LIMIT + 1)
    with limited.client() as client:
        announced = client.post(path, content=over, headers=JSON)
        chunked = client.post(path, content=iter([over[:1000], over[1000:]]), headers=JSON)
        at_the_limit = client.post(path, content=padded(path, BODY_LIMIT), headers=JSON)
    assert chunked.request.headers["Transfer-Encoding"] == "chunked"
    for reply in (announced, chunked):
        assert reply.status_code == 413, reply.text
        assert message_of(reply) == (
            f"the request body is larger than {BODY_LIMIT} bytes (BALANCER_MAX_BODY_BYTES)"
        )
    # Read whole and judged on what it says: a model or a URL nobody has.
    assert at_the_limit.status_code in (400, 404), at_the_limit.text


def test_an_endless_chunked_body_is_refused_without_being_held(limited: BalancerProcess) -> None:
    sent = 0

    def endless() -> Iterator[bytes]:
        nonlocal sent
        chunk = b" " * 65536
        while sent < 128 * MIB:  # an end only for a balancer that reads it all
            sent += len(chunk)
            yield chunk

    before = peak_memory(limited)
    with limited.client() as client:
        reply = client.post("/v1/chat/completions", content=endless(), headers=JSON)
    assert reply.status_code == 413
    # What the sockets' buffers took before the balancer hung up; never what it read.
    assert sent < 32 * MIB
    assert peak_memory(limited) - before < 16 * MIB
    assert reply.headers["Connection"] == "close"


def deep(head: bytes, depth: int) -> bytes:
    """`head`, the start of a body, completed with arrays nested so that the whole body nests
    `depth` levels deep."""
    opened = head.count(b"{") + head.count(b"[") - head.count(b"}") - head.count(b"]")
    arrays = depth - opened
    return head + b', "deep": ' + b"[" * arrays + b"]" * arrays + b"}" * opened


def test_json_nested_deeper_than_128_levels_is_a_400_never_a_500(
    limited: BalancerProcess, spawn: Callable[..., WorkerProcess]
) -> None:
    model, template_model, registered = unique_model(), unique_model(), unique_model()
    worker = spawn("deep")
    with limited.client() as client:
        # Renamed on the way, so the body is written again, not passed through.
        register_openai(client, model, worker.url, upstream_model="renamed")
        reply = client.post(
            "/api/server/register", json=template_registration(template_model, worker)
        )
        assert reply.status_code == 200
        # Each an object left open (its closing braces cut off), for `deep` to complete.
        heads = {
            "/v1/chat/completions": orjson.dumps({"model": model, **CHAT})[:-1],
            "/api/v1/chat/completions": orjson.dumps({"model_name": template_model, "input": "hi"})[
                :-1
            ],
            # Deep inside the template of the body the worker is sent.
            "/api/server/register": orjson.dumps(
                {
                    "model_name": registered,
                    "req_url_template": f"{worker.url}/api/generate",
                    "body": {"input": "{USER_PROMPT}"},
                }
            )[:-2],
        }
        replies = {
            (path, depth): client.post(path, content=deep(head, depth), headers=JSON)
            for path, head in heads.items()
            for depth in (128, 129, 300)
        }
        listed = client.get("/api/server/workers", params={"model_name": registered}).json()
    for (path, depth), reply in replies.items():
        if depth == 128:
            assert reply.status_code == 200, (path, reply.text)
        else:
            assert reply.status_code == 400, (path, depth, reply.text)
            assert message_of(reply) == (
                "the request body nests arrays and objects deeper than 128"
            )
    # Registered at 128 levels, not at 129 or 300.
    assert len(listed["data"]) == 1


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m", "model_name": "m", "input": "caf\xe9", "req_url_template": "http://x/"}',
        orjson.dumps({"model": "m", "model_name": "m", "input": "hi"}).decode().encode("utf-16"),
        b'{"model": "m", "model_name": "m", "input": "\\ud800", "req_url_template": "http://x/"}',
    ],
    ids=["latin-1", "utf-16", "lone-surrogate"],
)
def test_a_body_that_is_not_utf8_is_a_400(limited: BalancerProcess, body: bytes) -> None:
    with limited.client() as client:
        replies = [client.post(path, content=body, headers=JSON) for path in INFERENCE_AND_ADMIN]
    for reply in replies:
        assert reply.status_code == 400, reply.text
        assert message_of(reply).startswith("the request body is not valid UTF-8 JSON")


# Workers' answers


def gzip_bomb(mib: int) -> bytes:
    """A gzip member of `mib` MiB of zeros, about a thousandth of that in size: one deflated
    MiB, flushed so that it stands alone, repeated."""
    block = bytes(MIB)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(block, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc, (mib * MIB) & 0xFFFFFFFF)
    return header + piece * mib + deflate.flush() + trailer


def test_an_answer_over_the_limit_fails_that_attempt_and_another_worker_serves(
    limited: BalancerProcess, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    huge = Answer(body=completion("x" * 2 * ANSWER_LIMIT))
    with raw_worker(lambda _: huge) as verbose, limited.client() as client:
        verbose_id = register_openai(client, model, verbose.url)
        alone = client.post("/v1/chat/completions", json={"model": model, **CHAT})
        register_openai(client, model, spawn("good").url, strategy="round_robin")
        replies = [
            client.post("/v1/chat/completions", json={"model": model, **CHAT}) for _ in range(4)
        ]
    assert alone.status_code == 503
    message = message_of(alone)
    assert f"worker {verbose_id}: the answer is larger than {ANSWER_LIMIT} bytes" in message
    assert verbose.url not in message and "127.0.0.1" not in message
    assert [r.status_code for r in replies] == [200] * 4
    assert all(r.json()["choices"][0]["message"]["content"] == "[good] hi" for r in replies)
    assert "2" in {r.headers["X-Balancer-Attempts"] for r in replies}


def test_a_gzip_bomb_from_a_worker_cannot_exhaust_the_balancers_memory(
    limited: BalancerProcess,
) -> None:
    """256 MiB of zeros in 260 KB, compressed although nobody asked for it."""
    model = unique_model()
    bomb = Answer(headers={"Content-Encoding": "gzip"}, body=gzip_bomb(256))
    before = peak_memory(limited)
    with raw_worker(lambda _: bomb) as bomber, limited.client() as client:
        bomber_id = register_openai(client, model, bomber.url)
        reply = client.post("/v1/chat/completions", json={"model": model, **CHAT})
    assert reply.status_code == 503
    assert f"worker {bomber_id}: the answer is larger than {ANSWER_LIMIT} bytes" in (
        message_of(reply)
    )
    assert peak_memory(limited) - before < 64 * MIB


def test_an_endless_answer_fails_the_attempt_once_over_the_limit(
    limited: BalancerProcess,
) -> None:
    model = unique_model()
    endless = Answer(
        body=b'{"choices": [{"message": {"content": "', endless=b"la" * 32768, trickle=0.005
    )
    with raw_worker(lambda _: endless) as chatty, limited.client() as client:
        # Without a bound, the worker's own timeout would end the attempt, 5 s on.
        chatty_id = register_openai(client, model, chatty.url, timeout=5)
        reply = client.post("/v1/chat/completions", json={"model": model, **CHAT})
    assert reply.status_code == 503
    assert f"worker {chatty_id}: the answer is larger than {ANSWER_LIMIT} bytes" in (
        message_of(reply)
    )


def test_a_stream_is_not_bounded_by_the_answer_limit(limited: BalancerProcess) -> None:
    """Long generations stream for as long as they need."""
    model = unique_model()
    event = b'data: {"choices": [{"index": 0, "delta": {"content": "%s"}}]}\n\n' % (b"x" * 1000)
    events = event * (2 * ANSWER_LIMIT // len(event) + 1) + b"data: [DONE]\n\n"
    stream = Answer(headers={"Content-Type": "text/event-stream"}, body=events)
    with raw_worker(lambda _: stream) as streamer, limited.client() as client:
        register_openai(client, model, streamer.url)
        with client.stream(
            "POST", "/v1/chat/completions", json={"model": model, "stream": True, **CHAT}
        ) as reply:
            received = b"".join(reply.iter_bytes())
    assert reply.status_code == 200
    assert len(received) > 2 * ANSWER_LIMIT
    assert received.endswith(b"data: [DONE]\n\n")


# The capacity queue


def test_beyond_max_queue_waiting_requests_get_a_503_with_retry_after_naming_the_model(
    limited: BalancerProcess, spawn: Callable[..., WorkerProcess]
) -> None:
    """One request at the worker (max_concurrency 1), two waiting: the others are refused at
    once. Each request that waited is observed once in the queue-wait histogram, however
    many slots were freed while it waited."""
    model = unique_model()
    slow = spawn("slow", latency=1.0)

    def ask(_: Any = None) -> httpx.Response:
        with limited.client() as own:
            return own.post("/v1/chat/completions", json={"model": model, **CHAT})

    with limited.client() as client, ThreadPoolExecutor(6) as pool:
        register_openai(client, model, slow.url, max_concurrency=1)
        first = pool.submit(ask)
        deadline = time.monotonic() + 10
        while (
            client.get("/api/server/workers", params={"model_name": model}).json()["data"][0][
                "inflight"
            ]
            != 1
        ):
            assert time.monotonic() < deadline, "the first request never reached the worker"
            time.sleep(0.01)
        rest = list(pool.map(ask, range(5)))
        assert first.result().status_code == 200
        waited = metric(client, "balancer_queue_wait_seconds_count", model=model)
    refused = [r for r in rest if r.status_code == 503]
    served = [r for r in rest if r.status_code == 200]
    assert len(refused) + len(served) == 5
    # Three when all five arrive while the first is at the worker, as they do but on a
    # machine too busy to start five requests in a second.
    assert refused
    for reply in refused:
        assert reply.headers["Retry-After"] == "1"
        assert message_of(reply) == (
            f"model {model}: every worker is at its max_concurrency and the queue is full "
            f"({MAX_QUEUE} waiting, BALANCER_MAX_QUEUE)"
        )
    assert waited == len(served)
