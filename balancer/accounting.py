"""What one inference call did, filled in as it goes and read by metrics when it ends."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from balancer.types import ClientApi


@dataclass(slots=True)
class CallRecord:
    api: ClientApi
    started: float
    """perf_counter() when the request arrived."""
    model: str | None = None
    """Set once the model is known to be registered: bounded label values only."""
    worker: str | None = None
    upstream_seconds: float = 0.0
    """Time spent waiting on workers: every attempt up to its answer (first byte for streams)."""
    first_byte_at: float | None = None
    """perf_counter() when a stream's first byte was ready to send to the client."""
    ttft: float | None = None
    """Time to first token of a stream, as the client saw it."""
    input_tokens: int | None = None
    output_tokens: int | None = None
    tokens_estimated: bool = False
    generation_seconds: float | None = None
    """Time the worker spent generating the output tokens, for tokens per second."""


current_call: ContextVar[CallRecord | None] = ContextVar("current_call", default=None)


def usage_counts(document: object) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) from an OpenAI `usage` object, if it has one."""
    if not isinstance(document, dict):
        return None
    usage = document.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return prompt, completion


def record_tokens(prompt: int, completion: int, *, estimated: bool) -> None:
    """Credit tokens to the call under way, if any."""
    call = current_call.get()
    if call is not None:
        call.input_tokens = prompt
        call.output_tokens = completion
        call.tokens_estimated = estimated
