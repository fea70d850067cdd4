"""Health probing against real worker processes that are killed and started again, and against
loopback servers that never answer or trickle their answer. Probing, passive detection and panic
mode are specified in-process, in tests/probes/."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from balancer.fakes.processes import HOST, BalancerProcess, WorkerProcess
from tests.e2e.conftest import eventually, openai_registration, unique_model

INTERVAL = 0.5
TIMEOUT = 0.4
UNHEALTHY_THRESHOLD = 3
HEALTHY_THRESHOLD = 2


@pytest.fixture(scope="module")
def prober(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BalancerProcess]:
    with BalancerProcess(
        tmp_path_factory.mktemp("probes"),
        env={
            "BALANCER_PROBE_INTERVAL": str(INTERVAL),
            "BALANCER_PROBE_TIMEOUT": str(TIMEOUT),
            "BALANCER_UNHEALTHY_THRESHOLD": str(UNHEALTHY_THRESHOLD),
            "BALANCER_HEALTHY_THRESHOLD": str(HEALTHY_THRESHOLD),
        },
    ) as balancer:
        yield balancer


def health_of(api: httpx.Client, model: str) -> dict[str, dict[str, Any]]:
    data = api.get("/api/server/health").json()["data"][model]
    return {w["req_url_template"]: w for w in data["workers"]}


def status(api: httpx.Client, model: str, worker: WorkerProcess) -> str:
    return str(health_of(api, model)[f"{worker.url}/v1"]["status"])


def ask(api: httpx.Client, model: str) -> httpx.Response:
    return api.post("/api/v1/chat/completions", json={"input": "hi", "model_name": model})


def test_a_killed_worker_is_ejected_gets_no_traffic_and_comes_back(
    api: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    doomed, steady = spawn("doomed"), spawn("steady")
    for worker in (doomed, steady):
        api.post("/api/server/register", json=openai_registration(model, worker))
    eventually(lambda: {status(api, model, w) for w in (doomed, steady)} == {"healthy"}, within=3)

    doomed.signal(signal.SIGKILL)
    doomed.wait()
    eventually(
        lambda: status(api, model, doomed) == "ejected", within=INTERVAL * UNHEALTHY_THRESHOLD + 1
    )
    for _ in range(20):
        reply = ask(api, model)
        assert reply.json()["result"] == "[steady] hi"
        assert reply.headers["X-Balancer-Attempts"] == "1"  # the dead one was never tried

    doomed.start()  # same port
    eventually(
        lambda: status(api, model, doomed) == "healthy", within=HEALTHY_THRESHOLD * INTERVAL / 2 + 1
    )
    answers = {ask(api, model).json()["result"] for _ in range(10)}
    assert "[doomed] hi" in answers  # back in service
    assert health_of(api, model)[f"{doomed.url}/v1"]["ejections"] == 1


class Trickler:
    """A loopback HTTP server, in a thread of its own, that answers every request with a 200 at
    once and then sends the body a byte every `every` seconds, for ever."""

    def __init__(self, every: float = 0.2) -> None:
        self.every = every
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._port = 0

    def __enter__(self) -> str:
        """Starts serving; returns the server's origin."""
        self._thread.start()
        assert self._ready.wait(10), "the trickling server did not start"
        return f"http://{HOST}:{self._port}"

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        connections: set[asyncio.Task[Any]] = set()
        writers: set[asyncio.StreamWriter] = set()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                while not reader.at_eof():
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.sleep(self.every)

        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # Kept from the moment of accepting, so that every socket is closed at the end,
            # even one whose handler never got to run.
            writers.add(writer)
            task = asyncio.ensure_future(handle(reader, writer))
            connections.add(task)
            task.add_done_callback(connections.discard)

        server = await asyncio.start_server(accepted, HOST, 0)
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        for writer in writers:
            writer.transport.abort()
        for task in list(connections):
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await server.wait_closed()


def test_a_worker_that_trickles_its_answer_fails_its_probes(api: httpx.Client) -> None:
    """The probe timeout bounds the whole probe, however slowly the worker sends its body."""
    model = unique_model()
    with Trickler(every=TIMEOUT / 4) as origin:
        url = f"{origin}/v1"
        reply = api.post(
            "/api/server/register",
            json={"model_name": model, "api": "openai", "req_url_template": url},
        )
        assert reply.status_code == 200
        eventually(
            lambda: health_of(api, model)[url]["status"] == "ejected",
            within=UNHEALTHY_THRESHOLD * (INTERVAL + TIMEOUT) + 3,
        )
        row = health_of(api, model)[url]
        assert row["last_error"] == f"GET {url}/models: timed out (probe timeout {TIMEOUT:g} s)"
        api.post("/api/server/offline", json={"model_name": model, "req_url_template": url})


CROWD = 150
CROWD_INTERVAL = 1.0


def test_150_unreachable_workers_do_not_get_a_healthy_one_ejected(
    tmp_path: Path, spawn: Callable[..., WorkerProcess]
) -> None:
    """Probes of one worker never wait for connections held by others' probes. (The dead ones
    trickle: a pool of 100 connections, as httpx's was, fills up with them. Listeners that
    never accept are covered by tests/probes/test_checks.py.)"""
    healthy = spawn("healthy")
    balancer = BalancerProcess(
        tmp_path,
        env={
            "BALANCER_PROBE_INTERVAL": str(CROWD_INTERVAL),
            "BALANCER_PROBE_TIMEOUT": str(TIMEOUT),
            "BALANCER_UNHEALTHY_THRESHOLD": str(UNHEALTHY_THRESHOLD),
        },
    )
    with contextlib.ExitStack() as stack:
        dead = stack.enter_context(Trickler())
        balancer.start()
        stack.callback(balancer.stop)
        api = stack.enter_context(balancer.client())
        api.post("/api/server/register", json=openai_registration("live", healthy))
        live = f"{healthy.url}/v1"
        eventually(lambda: health_of(api, "live")[live]["status"] == "healthy", within=3)

        def still_healthy() -> None:
            row = health_of(api, "live")[live]
            assert (row["status"], row["ejections"]) == ("healthy", 0), row

        for i in range(CROWD):
            reply = api.post(
                "/api/server/register",
                json={"model_name": "dead", "api": "openai", "req_url_template": f"{dead}/w{i}/v1"},
            )
            assert reply.status_code == 200
            if i % 50 == 0:
                still_healthy()

        def all_dead_ejected() -> bool:
            still_healthy()
            return bool(api.get("/api/server/health").json()["data"]["dead"]["ejected"] == CROWD)

        # Each of their probes ends at the probe timeout, trickled or not.
        eventually(all_dead_ejected, within=(UNHEALTHY_THRESHOLD + 2) * (CROWD_INTERVAL + TIMEOUT))
        probed_at = health_of(api, "live")[live]["last_probe_at"]
        # Then several more intervals, the dead now probed twice as often.
        deadline = time.monotonic() + 3 * CROWD_INTERVAL
        while time.monotonic() < deadline:
            still_healthy()
            time.sleep(CROWD_INTERVAL / 4)
        assert health_of(api, "live")[live]["last_probe_at"] != probed_at  # it was probed
