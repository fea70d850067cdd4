"""The shared vocabulary of the balancer."""

from collections.abc import Callable
from typing import Literal, get_args

Api = Literal["template", "openai"]
"""How a worker is called: an OperateGPT body template, or an OpenAI-compatible server."""

WorkerStatus = Literal["unknown", "healthy", "ejected"]

ShownStatus = Literal["unknown", "healthy", "ejected", "draining"]
"""A worker's status as listed: its health, or `draining` while it finishes its last requests."""

ClientApi = Literal["operategpt", "openai"]
"""Which of our two front APIs a client called; errors use that API's envelope."""

Strategy = Literal[
    "least_latency", "weighted", "round_robin", "random", "least_requests", "cache_aware"
]
"""How a model's worker is chosen; `balancer.selection.POLICIES` maps each to its policy."""

STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)

Clock = Callable[[], float]
"""Monotonic seconds; injected so policies and health state run on a fake clock in tests."""
