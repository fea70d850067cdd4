"""Routing on a simulated vLLM fleet: four engines (`balancer fake-worker --engine`, on the load
core with this client), the router alone on the proxy core, streamed chat completions.

Workload A, shared prefixes: tenants, each with a long system prompt of its own, whose users hold
multi-turn conversations (each turn sends the whole history, so it grows every turn; the next
turn follows the answer after a pause). Conversations start as a Poisson process, tenants chosen
with Zipf popularity (a few tenants bring most of the traffic, as on a real service). Workload
B, no shared prefixes: single questions of random words, Poisson arrivals.

Each policy runs in turn on the same fleet, its caches emptied first (`POST
/reset_prefix_cache`), against the same arrivals (a fixed seed). Reported per policy: time to
first token (from sending the request to its first content event; a request cut off at the end
of the run without one counts as infinitely slow), output tokens received per second within the
arrival window, the prefix-cache hit rate from the engines' own counters (the change over the
run of `vllm:prefix_cache_hits_total` over `vllm:prefix_cache_queries_total`), and how many
requests each engine answered.

    python -m bench.routing [--quick]        prints the Markdown section
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from itertools import accumulate
from pathlib import Path
from typing import Any

import httpx
import orjson

from balancer.fakes.processes import WorkerProcess
from balancer.forwarding import sse
from bench import peers
from bench.client import Connection, Target, percentile
from bench.client import run as run_loop
from bench.harness import LOAD_CORE, balancer, on_load_core, register
from bench.report import fmt, table

ENGINES = 4
ENGINE: dict[str, Any] = {
    "engine": True,
    "slots": 8,
    "cache_blocks": 1024,
    "block_size": 16,
    "prefill_tokens_per_s": 20_000,
    "decode_step": 0.010,
    "decode_step_per_request": 0.0005,
}
"""Each engine: 8 slots; a prefix cache of 768 blocks of 16 tokens (12,288 tokens: half of the
tenants' system prompts together, so an engine that sees every tenant keeps evicting them);
prefill at 20,000 tokens/s (a 1,000-token system prompt costs 50 ms to compute, against some
13 ms a decode step); docs/engine.md's defaults otherwise."""
ANSWER_TOKENS = 16


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    rate: float
    """Conversations (A) or questions (B) started per second."""
    tenants: int = 0
    """0: no shared prefixes at all."""
    system_words: int = 2000
    zipf: float = 0.5
    turns: int = 5
    question_words: int = 30
    think: float = 1.0
    """Mean pause (seconds, exponential) between an answer and the next turn."""
    prompt_words: tuple[int, int] = (600, 1400)
    """Workload B: each question's length, uniform."""

    def describe(self) -> str:
        if self.tenants:
            return (
                f"{self.tenants} tenants with {self.system_words:,}-word system prompts, "
                f"popularity Zipf s={self.zipf:g}; {self.rate:g} conversations/s (Poisson) of "
                f"{self.turns} turns, {self.question_words} words a question, pauses of "
                f"{self.think:g} s on average; answers of {ANSWER_TOKENS} tokens"
            )
        low, high = self.prompt_words
        return (
            f"{self.rate:g} questions/s (Poisson) of {low:,} to {high:,} random words, no two "
            f"sharing a first block; answers of {ANSWER_TOKENS} tokens"
        )


SHARED = Workload("A", "shared prefixes", rate=20.0, tenants=24)
UNSHARED = Workload("B", "no shared prefixes", rate=32.0)
WORKLOADS = (SHARED, UNSHARED)


@dataclass(frozen=True)
class Policy:
    name: str
    strategy: str
    peer: str | None = None
    """None: the balancer with this strategy; else the peer that runs it."""


POLICIES = (
    Policy("round_robin", "round_robin"),
    Policy("least_requests", "least_requests"),
    Policy("least_latency", "least_latency"),
    Policy("cache_aware", "cache_aware"),
    Policy("vllm-router cache_aware", "cache_aware", "vllm-router"),
    Policy("vllm-router power_of_two", "power_of_two", "vllm-router"),
)


@dataclass(frozen=True)
class Plan:
    seconds: float = 15.0
    """Arrivals last this long; what is still in flight then has `drain` seconds to end."""
    drain: float = 8.0


FULL = Plan()
QUICK = Plan(seconds=4.0, drain=3.0)


@dataclass
class Row:
    workload: str
    policy: str
    requests: int = 0
    errors: int = 0
    unanswered: int = 0
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    tokens_per_second: float | None = None
    hit_rate: float | None = None
    per_worker: dict[str, int] = field(default_factory=dict)
    note: str = ""


@dataclass
class Results:
    plan: Plan
    workloads: tuple[Workload, ...]
    rows: list[Row]
    versions: dict[str, str]


# The load.


class _Client:
    """Streamed chat completions to one router over keep-alive connections (one per request in
    flight), timing each request's first token."""

    def __init__(self, url: str, model: str, window_end: float) -> None:
        self.url = url
        self.model = model
        self.window_end = window_end
        self.idle: list[Connection] = []
        self.target = Target.post(url, b"")
        self.requests = 0
        self.errors = 0
        self.unanswered = 0
        self.tokens = 0
        """Output tokens received within the arrival window."""
        self.ttft_ms: list[float] = []
        self.served: Counter[str] = Counter()

    async def ask(self, messages: list[dict[str, str]]) -> str | None:
        """The answer's text, or None if it failed."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True}
        body["max_tokens"] = ANSWER_TOKENS
        request = Target.post(self.url, orjson.dumps(body)).request
        answer = _Answer(self)
        self.requests += 1
        conn: Connection | None = None
        try:
            if self.idle:
                conn = self.idle.pop()
                try:
                    status = await conn.send(request, None, answer.on_body)
                except OSError:
                    # The router closed it while it was idle: no byte of the request was used.
                    conn.close()
                    conn = None
            if conn is None:
                conn = await Connection.open(self.target)
                status = await conn.send(request, None, answer.on_body)
        except asyncio.CancelledError:
            if answer.first is None:
                self.unanswered += 1
                self.ttft_ms.append(math.inf)
            if conn is not None:
                conn.close()  # the router sees the client leave, and so does the engine
            raise
        except OSError:
            self.errors += 1
            return None
        if conn.reusable:
            self.idle.append(conn)
        else:
            conn.close()
        if status != 200 or not answer.pieces:
            self.errors += 1
            return None
        text = "".join(answer.pieces)
        self.served[text[1 : text.index("]")] if text.startswith("[") else "?"] += 1
        return text

    def close(self) -> None:
        for conn in self.idle:
            conn.close()


class _Answer:
    """One streamed answer's content events, the first one timed."""

    __slots__ = ("buffer", "client", "first", "pieces", "started")

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.started = time.perf_counter()
        self.first: float | None = None
        self.pieces: list[str] = []
        self.buffer = b""

    def on_body(self, piece: bytes) -> None:
        self.buffer += piece
        whole = sse.whole_events_length(self.buffer)
        if not whole:
            return
        events, self.buffer = self.buffer[:whole], self.buffer[whole:]
        for event in sse.split_events(events):
            data = sse.event_data(event)
            if not data or data == b"[DONE]":
                continue
            for choice in orjson.loads(data).get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    self._token(text)

    def _token(self, text: str) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
            self.client.ttft_ms.append((now - self.started) * 1000)
        self.pieces.append(text)
        if now <= self.client.window_end:
            self.client.tokens += 1


def _words(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randrange(5000)}" for _ in range(n))


def system_prompt(tenant: int, words: int) -> str:
    return " ".join(f"t{tenant}r{i}" for i in range(words))


async def _conversation(
    client: _Client, workload: Workload, system: str, rng: random.Random
) -> None:
    messages = [{"role": "system", "content": system}]
    for _ in range(workload.turns):
        messages.append({"role": "user", "content": _words(rng, workload.question_words)})
        answer = await client.ask(messages)
        if answer is None:
            return
        messages.append({"role": "assistant", "content": answer})
        pause = rng.expovariate(1 / workload.think)
        if time.perf_counter() + pause >= client.window_end:
            return  # the next turn would come after the arrivals end
        await asyncio.sleep(pause)


async def _question(client: _Client, workload: Workload, n: int, rng: random.Random) -> None:
    words = rng.randint(*workload.prompt_words)
    await client.ask([{"role": "user", "content": f"u{n} {_words(rng, words)}"}])


async def _load(url: str, model: str, workload: Workload, plan: Plan, seed: int) -> _Client:
    rng = random.Random(seed)
    systems = [system_prompt(t, workload.system_words) for t in range(workload.tenants)]
    popularity = list(accumulate(1 / (t + 1) ** workload.zipf for t in range(workload.tenants)))
    start = time.perf_counter()
    client = _Client(url, model, start + plan.seconds)
    tasks: list[asyncio.Task[None]] = []
    due = start + rng.expovariate(workload.rate)
    while due < client.window_end:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        own = random.Random(rng.random())
        if workload.tenants:
            tenant = rng.choices(range(workload.tenants), cum_weights=popularity)[0]
            job = _conversation(client, workload, systems[tenant], own)
        else:
            job = _question(client, workload, len(tasks), own)
        tasks.append(asyncio.create_task(job))
        due += rng.expovariate(workload.rate)
    left = client.window_end + plan.drain - time.perf_counter()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=max(left, 0.1))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    client.close()
    return client


# The fleet.


class Fleet:
    """The simulated engines, started once and emptied before each run."""

    def __init__(self, tmp: Path) -> None:
        self.workers = [
            WorkerProcess(tmp, f"e{i}", cores=LOAD_CORE, **ENGINE) for i in range(ENGINES)
        ]
        for worker in self.workers:
            worker.spawn()
        for worker in self.workers:
            worker.wait_until_up()

    @property
    def urls(self) -> list[str]:
        return [w.url for w in self.workers]

    def counters(self) -> dict[str, float]:
        """The engines' counters and gauges, summed over the fleet."""
        total: dict[str, float] = {}
        for worker in self.workers:
            text = httpx.get(worker.url + "/metrics", timeout=5).text
            for line in text.splitlines():
                if line.startswith("vllm:"):
                    name, value = line.split("{", 1)[0], line.rsplit(" ", 1)[1]
                    total[name] = total.get(name, 0.0) + float(value)
        return total

    def reset(self, timeout: float = 20.0) -> None:
        """Wait until no engine holds a request (clients cut off at the end of the last run
        are aborted), then empty every prefix cache."""
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            while True:
                reply = httpx.post(worker.url + "/reset_prefix_cache", timeout=5)
                if reply.status_code == 200:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{worker.name} still busy after {timeout:.0f} s")
                time.sleep(0.1)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


# A run.


def _measure(
    fleet: Fleet, url: str, model: str, workload: Workload, policy: Policy, plan: Plan
) -> Row:
    fleet.reset()
    before = fleet.counters()
    client = run_loop(_load(url, model, workload, plan, seed=14))
    after = fleet.counters()
    queries = after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"]
    hits = after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]
    return Row(
        workload.key,
        policy.name,
        requests=client.requests,
        errors=client.errors,
        unanswered=client.unanswered,
        ttft_p50_ms=percentile(client.ttft_ms, 50) if client.ttft_ms else None,
        ttft_p99_ms=percentile(client.ttft_ms, 99) if client.ttft_ms else None,
        tokens_per_second=client.tokens / plan.seconds,
        hit_rate=hits / queries if queries else None,
        per_worker={w.name: client.served.get(w.name, 0) for w in fleet.workers},
    )


def run(
    tmp: Path,
    plan: Plan = FULL,
    *,
    policies: tuple[Policy, ...] = POLICIES,
    workloads: tuple[Workload, ...] = WORKLOADS,
) -> Results:
    with on_load_core():  # the client shares the load core with the engines
        fleet = Fleet(tmp)
        lb, lb_url = balancer(tmp, name="balancer-routing")
        rows: list[Row] = []
        versions: dict[str, str] = {}
        try:
            for workload in workloads:
                for policy in policies:
                    print(f"  routing {workload.key}: {policy.name}", file=sys.stderr, flush=True)
                    if policy.peer is None:
                        model = f"routing-{workload.key.lower()}-{policy.strategy}"
                        # The engines answer to any model name: no name to rewrite on the way back.
                        register(
                            lb_url,
                            model,
                            fleet.urls,
                            strategy=policy.strategy,
                            upstream_model=model,
                        )
                        url = f"{lb_url}/v1/chat/completions"
                        rows.append(_measure(fleet, url, model, workload, policy, plan))
                        continue
                    try:
                        launch = peers.vllm_router(tmp, fleet.urls, policy.strategy)
                        versions[launch.name] = launch.version
                        launch.process.start(launch.start_timeout)
                    except (peers.PeerUnavailable, RuntimeError) as exc:
                        rows.append(Row(workload.key, policy.name, note=str(exc).split("\n")[0]))
                        continue
                    try:
                        url = f"{launch.url}/v1/chat/completions"
                        rows.append(_measure(fleet, url, "fake-model", workload, policy, plan))
                    finally:
                        launch.process.stop()
        finally:
            lb.stop()
            fleet.stop()
    return Results(plan, workloads, rows, versions)


# The report.


def _row(workload: str, policy: str, rows: list[Row]) -> Row | None:
    return next((r for r in rows if r.workload == workload and r.policy == policy), None)


def goals(rows: list[Row]) -> str:
    """Issue 14's goals, as measured."""

    def value(workload: str, policy: str, what: str) -> float | None:
        row = _row(workload, policy, rows)
        return None if row is None else getattr(row, what)

    def times(a: float | None, b: float | None) -> str:
        if a is None or b is None or not b:
            return "-"
        return "∞" if math.isinf(a) else f"{a / b:.1f}x"

    ca_p99 = value("A", "cache_aware", "ttft_p99_ms")
    rr_p99 = value("A", "round_robin", "ttft_p99_ms")
    vr_p99 = value("A", "vllm-router cache_aware", "ttft_p99_ms")
    ca_tps = value("A", "cache_aware", "tokens_per_second")
    vr_tps = value("A", "vllm-router cache_aware", "tokens_per_second")
    b_ca = value("B", "cache_aware", "ttft_p99_ms")
    b_ll = value("B", "least_latency", "ttft_p99_ms")
    b_ca_tps = value("B", "cache_aware", "tokens_per_second")
    b_ll_tps = value("B", "least_latency", "tokens_per_second")

    def percent(a: float | None, b: float | None) -> str:
        if a is None or b is None or not b or math.isinf(a) or math.isinf(b):
            return "-"
        return f"{(a / b - 1):+.0%}"

    return (
        "Against issue 14's goals: on workload A, round robin's TTFT p99 is "
        f"{times(rr_p99, ca_p99)} cache_aware's (goal: at least 3x); cache_aware's TTFT p99 is "
        f"{percent(ca_p99, vr_p99)} and its output tokens/s {percent(ca_tps, vr_tps)} against "
        "vllm-router's cache_aware (goal: lower p99, more tokens/s); on workload B, "
        f"cache_aware's TTFT p99 is {percent(b_ca, b_ll)} and its output tokens/s "
        f"{percent(b_ca_tps, b_ll_tps)} against least_latency's (goal: within 5%).\n"
    )


def section(results: Results) -> str:
    plan = results.plan
    out = [
        "\n## Routing on a simulated vLLM fleet\n\n",
        f"{ENGINES} simulated engines (`balancer fake-worker --engine`, docs/engine.md) on "
        "core 1 with the client; the router alone on core 0 (the balancer with metrics, probes "
        "and JSON access logs on; vllm-router "
        f"{results.versions.get('vllm-router', '')} with its default thresholds, "
        "`RUST_LOG=warn`). Each engine: "
        f"{ENGINE['slots']} slots, a prefix cache of {ENGINE['cache_blocks']} blocks of "
        f"{ENGINE['block_size']} tokens ({ENGINE['cache_blocks'] * ENGINE['block_size']:,} "
        f"tokens), prefill at {ENGINE['prefill_tokens_per_s']:,} tokens/s, decode steps of "
        f"{ENGINE['decode_step'] * 1000:g} ms + {ENGINE['decode_step_per_request'] * 1000:g} ms "
        f"per further request in the batch. Arrivals for {plan.seconds:g} s, then "
        f"{plan.drain:g} s for what is in flight to end; caches emptied before each policy's "
        "run; the same arrivals for every policy. TTFT: from the request to its first token "
        "(cut off without one: ∞); output tokens/s: tokens received within the arrival "
        "window; hit rate: prompt tokens the engines found in their caches "
        "(`vllm:prefix_cache_hits_total` ÷ `vllm:prefix_cache_queries_total`, over the run).\n",
    ]
    columns = ["policy", "requests", "TTFT p50 ms", "TTFT p99 ms", "output tokens/s"]
    columns += ["prefix-cache hits", "requests per worker", "errors", "cut off"]
    for workload in results.workloads:
        rows = [r for r in results.rows if r.workload == workload.key]
        if not rows:
            continue
        out.append(f"\n### Workload {workload.key}: {workload.label}\n\n{workload.describe()}.\n\n")
        cells = []
        for r in rows:
            if r.note:
                cells.append([r.policy, f"not measured: {r.note}"] + ["-"] * (len(columns) - 2))
                continue
            cells.append(
                [
                    f"**{r.policy}**" if r.policy == "cache_aware" else r.policy,
                    str(r.requests),
                    fmt(r.ttft_p50_ms),
                    fmt(r.ttft_p99_ms),
                    fmt(r.tokens_per_second),
                    "-" if r.hit_rate is None else f"{r.hit_rate:.0%}",
                    " / ".join(str(n) for n in r.per_worker.values()),
                    str(r.errors),
                    str(r.unanswered),
                ]
            )
        out.append(table(columns, cells))
    out.append("\n" + goals(results.rows))
    return "".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.routing")
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    parser.add_argument("--policy", action="append", help="only these (by name); repeatable")
    parser.add_argument("--workload", action="append", choices=["A", "B"])
    parser.add_argument("--seconds", type=float, help="of arrivals per run, for calibrating")
    parser.add_argument("--rate", type=float, help="arrivals per second, for calibrating")
    args = parser.parse_args()
    policies = tuple(p for p in POLICIES if not args.policy or p.name in args.policy)
    workloads = tuple(
        replace(w, rate=args.rate or w.rate)
        for w in WORKLOADS
        if not args.workload or w.key in args.workload
    )
    plan = QUICK if args.quick else FULL
    if args.seconds:
        plan = replace(plan, seconds=args.seconds)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llm-balancer-routing-") as name:
        results = run(Path(name), plan, policies=policies, workloads=workloads)
    print(section(results))
    print(f"routing: {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
