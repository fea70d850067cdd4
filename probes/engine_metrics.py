"""What an inference engine's own `/metrics` says about its load: requests waiting and running, and
how full its KV cache is, under the names vLLM, SGLang, TGI and llama.cpp use. Pure parsing."""

from __future__ import annotations

import math
from dataclasses import dataclass

# For each signal, the names engines publish it under, the preferred one first (vLLM 0.10
# publishes both of its KV-cache names; the newer one wins).
WAITING = (
    "vllm:num_requests_waiting",
    "sglang:num_queue_reqs",
    "tgi_queue_size",
    "llamacpp:requests_deferred",
)
RUNNING = (
    "vllm:num_requests_running",
    "sglang:num_running_reqs",
    "tgi_batch_current_size",
    "llamacpp:requests_processing",
)
KV_CACHE = (
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "sglang:token_usage",
    "llamacpp:kv_cache_usage_ratio",
)
_WANTED = frozenset(WAITING + RUNNING + KV_CACHE)


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """One reading of an engine's load; None where the engine does not say."""

    waiting: int | None
    running: int | None
    kv_cache_usage: float | None
    """0 to 1."""

    @property
    def queue_depth(self) -> int | None:
        """Requests the engine holds, waiting or running (None if it reports neither)."""
        if self.waiting is None and self.running is None:
            return None
        return (self.waiting or 0) + (self.running or 0)


def parse_engine_metrics(text: str) -> EngineLoad | None:
    """The load in a Prometheus text exposition, or None if it holds none of the known names
    (or is not Prometheus text at all).

    A vLLM server's /metrics runs to hundreds of lines of histograms; only the lines of the few
    families read here go to the parser. Samples of one family are summed (data-parallel
    engines report one each), KV-cache usage averaged over them.
    """
    # Imported here: the balancer's core stays free of prometheus_client (metrics.py is its one
    # user) until a worker's metrics are read.
    from prometheus_client.parser import text_string_to_metric_families

    lines = [line for line in text.splitlines() if _family_of(line) in _WANTED]
    if not lines:
        return None
    values: dict[str, list[float]] = {}
    try:
        for family in text_string_to_metric_families("\n".join(lines) + "\n"):
            for sample in family.samples:
                if sample.name in _WANTED and math.isfinite(sample.value) and sample.value >= 0:
                    values.setdefault(sample.name, []).append(sample.value)
    except ValueError:
        return None  # not Prometheus text after all
    waiting = _first(values, WAITING)
    running = _first(values, RUNNING)
    kv = _first(values, KV_CACHE)
    if waiting is None and running is None and kv is None:
        return None
    return EngineLoad(
        waiting=None if waiting is None else round(sum(waiting)),
        running=None if running is None else round(sum(running)),
        kv_cache_usage=None if kv is None else min(sum(kv) / len(kv), 1.0),
    )


def _family_of(line: str) -> str:
    if line.startswith("#"):
        parts = line.split(None, 3)
        return parts[2] if len(parts) > 2 and parts[1] in ("HELP", "TYPE") else ""
    end = len(line)
    for stop in "{ \t":
        at = line.find(stop)
        if at != -1 and at < end:
            end = at
    return line[:end]


def _first(values: dict[str, list[float]], names: tuple[str, ...]) -> list[float] | None:
    for name in names:
        if name in values:
            return values[name]
    return None
