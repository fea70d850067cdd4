"""Fixtures: real fake workers and real balancers, as processes on 127.0.0.1, stopped by PID."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

HOST = "127.0.0.1"
_counter = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until_up(
    url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 15.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up in {timeout}s:\n{log.read_text()[-3000:]}")


class Process:
    """A child process we started, stopped by its PID. A server among them listens on `port`
    and is up once `ready_path` answers."""

    port: int
    ready_path = ""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log = log
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        """Start the process without waiting for it to serve."""
        out = self.log.open("ab")
        self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        out.close()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it answers."""
        self.spawn()
        assert self.proc is not None
        wait_until_up(self.url + self.ready_path, self.proc, self.log)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(5)


class FakeWorker(Process):
    def __init__(self, tmp: Path, name: str, **options: Any) -> None:
        self.name = name
        self.port = free_port()
        args = [
            sys.executable,
            "-m",
            "balancer",
            "fake-worker",
            "--port",
            str(self.port),
            "--name",
            name,
        ]
        for key, value in options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        super().__init__(args, tmp / f"worker-{name}-{self.port}.log")

    ready_path = "/health"

    def control(self, **changes: Any) -> None:
        httpx.post(self.url + "/_control", json=changes, timeout=5).raise_for_status()

    def served(self) -> dict[str, int]:
        data: dict[str, int] = httpx.get(self.url + "/_stats", timeout=5).json()["served"]
        return data


class Balancer(Process):
    def __init__(
        self,
        tmp: Path,
        *,
        db: Path | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.db = db or tmp / f"balancer-{self.port}.db"
        base_env = {
            "BALANCER_STORE": f"sqlite:///{self.db}",
            "BALANCER_LOG_FORMAT": "json",
            "BALANCER_SHUTDOWN_GRACE": "10",
        }
        super().__init__(
            [sys.executable, "-m", "balancer", "serve", "--port", str(self.port), *(args or [])],
            tmp / f"balancer-{self.port}.log",
            env={**base_env, **(env or {})},
        )

    ready_path = "/healthz"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


def unique_model(prefix: str = "m") -> str:
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


def template_registration(model: str, worker: FakeWorker, **fields: Any) -> dict[str, Any]:
    """The OperateGPT seed's own registration shape, pointed at a fake worker."""
    return {
        "model_name": model,
        "body": {"input": "{USER_PROMPT}", "model_name": "{MODEL_NAME}"},
        "req_url_template": f"{worker.url}/api/generate",
        "owner": "operategpt",
        "response_extract": "data.items[].attributes.answer",
        **fields,
    }


def openai_registration(model: str, worker: FakeWorker, **fields: Any) -> dict[str, Any]:
    return {"model_name": model, "api": "openai", "req_url_template": f"{worker.url}/v1", **fields}


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def workers(session_tmp: Path) -> Iterator[list[FakeWorker]]:
    """Three fake workers shared by the tests that do not change their behaviour."""
    started = [FakeWorker(session_tmp, f"w{i}") for i in range(1, 4)]
    try:
        for worker in started:
            worker.start()
        yield started
    finally:
        for worker in started:
            worker.stop()


@pytest.fixture(scope="session")
def balancer(session_tmp: Path) -> Iterator[Balancer]:
    """One balancer shared by tests that register models of their own (unique names)."""
    proc = Balancer(session_tmp)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(balancer: Balancer) -> Iterator[httpx.Client]:
    with balancer.client() as c:
        yield c


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., FakeWorker]]:
    """Start fake workers of this test's own: spawn(name, latency=0.01, ...)."""
    started: list[FakeWorker] = []

    def make(name: str, **options: Any) -> FakeWorker:
        worker = FakeWorker(tmp_path, name, **options)
        worker.start()
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop()


@pytest.fixture
def fresh_worker(tmp_path: Path) -> Iterator[FakeWorker]:
    """A fake worker of this test's own, free to be reconfigured or killed."""
    worker = FakeWorker(tmp_path, "fresh")
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
