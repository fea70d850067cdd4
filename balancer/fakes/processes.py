"""Child processes on 127.0.0.1 (fake workers, balancers, nginx, Prometheus) for the end-to-end
tests and the benchmark: started on a free port, waited for, stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

import httpx

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Process:
    """A child process, its output in `log`; pinned to `cores` (taskset) when given. When it has
    a `ready_url`, `start` waits until it `answers()`."""

    def __init__(
        self,
        args: list[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        cores: str | None = None,
        ready_url: str | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.args = ["taskset", "-c", cores, *args] if cores else args
        self.log = log
        self.env = {**os.environ, **(env or {})}
        self.ready_url = ready_url
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        """Start the process without waiting for it to serve."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd
            )

    def start(self, timeout: float = 20.0) -> None:
        """Start the process and wait until it answers."""
        self.spawn()
        if self.ready_url:
            self.wait_until_up(timeout)

    def wait_until_up(self, timeout: float = 20.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.args} exited with {self.proc.returncode}:\n{self.tail()}"
                )
            if self.answers():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.ready_url} did not come up in {timeout}s:\n{self.tail()}")

    def answers(self) -> bool:
        """It serves: `ready_url` answers a GET below 500."""
        assert self.ready_url is not None
        try:
            return httpx.get(self.ready_url, timeout=1.0).status_code < 500
        except httpx.TransportError:
            return False

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def __enter__(self) -> Self:
        """`with Process(...) as p:` starts it and stops it at the end, whatever happens."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(5)


class WorkerProcess(Process):
    """`balancer fake-worker` on a free port; options are its flags (latency=0.05, ...)."""

    def __init__(self, tmp: Path, name: str, *, cores: str | None = None, **options: Any) -> None:
        self.name = name
        self.port = free_port()
        args = [sys.executable, "-m", "balancer", "fake-worker", "--port", str(self.port)]
        args += ["--name", name]
        for key, value in options.items():
            flag = f"--{key.replace('_', '-')}"
            args += [flag] if value is True else [flag, str(value)]
        super().__init__(
            args,
            tmp / f"worker-{name}-{self.port}.log",
            cores=cores,
            ready_url=f"http://{HOST}:{self.port}/health",
        )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        """SIGKILL: a fake worker holds nothing that needs a graceful shutdown, and waiting for
        the balancer's kept-alive connections to close would cost every test a second."""
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(5)

    def control(self, **changes: Any) -> None:
        """Change the worker's behaviour while it runs."""
        httpx.post(self.url + "/_control", json=changes, timeout=5).raise_for_status()

    def peak_inflight(self) -> int:
        """The most inference calls it had at once."""
        return int(httpx.get(self.url + "/_stats", timeout=5).json()["peak_inflight"])

    def served(self) -> dict[str, int]:
        data: dict[str, int] = httpx.get(self.url + "/_stats", timeout=5).json()["served"]
        return data


class BalancerProcess(Process):
    """`balancer serve` on a free port (or `port`), its registry in a SQLite file of its own.

    `source` runs another checkout of the balancer instead of this one (for side-by-side
    benchmarks): its folder goes first on the module path. `BALANCER_TEST_SOURCE` does the same
    for a whole test run (`BALANCER_TEST_SOURCE=/tmp/before pytest tests/e2e`: which contracts
    did the old code break?).
    """

    def __init__(
        self,
        tmp: Path,
        *,
        db: Path | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        port: int | None = None,
        cores: str | None = None,
        name: str = "balancer",
        source: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.db = db or tmp / f"{name}-{self.port}.db"
        base_env = {
            "BALANCER_STORE": f"sqlite:///{self.db}",
            "BALANCER_LOG_FORMAT": "json",
            "BALANCER_SHUTDOWN_GRACE": "10",
        }
        if source is None and os.environ.get("BALANCER_TEST_SOURCE"):
            source = Path(os.environ["BALANCER_TEST_SOURCE"])
        if source is not None:
            base_env["PYTHONPATH"] = str(source)
        super().__init__(
            [sys.executable, "-m", "balancer", "serve", "--port", str(self.port), *(args or [])],
            tmp / f"{name}-{self.port}.log",
            env={**base_env, **(env or {})},
            cores=cores,
            ready_url=f"http://{HOST}:{self.port}/healthz",
            cwd=source,
        )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


class RedisProcess(Process):
    """Debian's `redis-server` on a free loopback port, its data in `tmp` (append-only file,
    fsync'd on every write: a restart keeps every registration)."""

    def __init__(self, tmp: Path, *, port: int | None = None, name: str = "redis") -> None:
        self.port = port or free_port()
        data = tmp / f"{name}-{self.port}"
        data.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--bind", HOST, "--port", str(self.port), "--dir", str(data)]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        args += ["--protected-mode", "no", "--daemonize", "no"]
        super().__init__(args, tmp / f"{name}-{self.port}.log", ready_url=self.url)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def answers(self) -> bool:
        """It answers PING (and has loaded its data: until then it answers LOADING)."""
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False
