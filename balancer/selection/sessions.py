"""Sticky sessions: a request that names its session (`X-Session-ID`, or OpenAI's `user`) goes
to the worker that served the session before, while that worker may be chosen (healthy, below its
limits) and is not overloaded compared with the others. Pure: the clock is the caller's.

Sessions are kept per model, at most `max_sessions` of them (the least recently used go first),
and each expires `ttl` seconds after its last request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from balancer.config import DEFAULT_BALANCE_ABS_THRESHOLD, DEFAULT_BALANCE_REL_THRESHOLD
from balancer.registry.models import Worker
from balancer.selection.cache_aware import load_of, out_of_balance

DEFAULT_SESSION_TTL = 600.0
DEFAULT_MAX_SESSIONS = 100_000
MAX_SESSION_ID = 256
"""Characters of a session id kept; longer ids are cut (memory stays bounded)."""


def session_of(header: str | None, data: dict[str, object]) -> str | None:
    """The request's session: its `X-Session-ID` header, else OpenAI's `user` field."""
    session = header or data.get("user")
    if isinstance(session, str) and session:
        return session[:MAX_SESSION_ID]
    return None


class Sessions:
    def __init__(
        self,
        *,
        ttl: float = DEFAULT_SESSION_TTL,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        balance_abs: float = DEFAULT_BALANCE_ABS_THRESHOLD,
        balance_rel: float = DEFAULT_BALANCE_REL_THRESHOLD,
    ) -> None:
        self.ttl = ttl
        self.max_sessions = max_sessions
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel
        self._workers: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        """(model, session) -> (worker id, last request time); least recently used first."""

    def __len__(self) -> int:
        return len(self._workers)

    def home(
        self, model: str, session: str, candidates: Sequence[Worker], now: float
    ) -> Worker | None:
        """The session's worker, if the session is alive and its worker among the candidates
        (not ejected, backing off, at its limit, removed, or tried already)."""
        entry = self._workers.get((model, session))
        if entry is None:
            return None
        worker_id, seen = entry
        if now - seen > self.ttl:
            del self._workers[(model, session)]
            return None
        return next((w for w in candidates if w.id == worker_id), None)

    def overloaded(self, worker: Worker, candidates: Sequence[Worker]) -> bool:
        """Out of balance with the least loaded candidate, by cache_aware's measure."""
        load, lightest = load_of(worker), min(load_of(w) for w in candidates)
        return out_of_balance(load, lightest, self.balance_abs, self.balance_rel)

    def remember(self, model: str, session: str, worker: Worker, now: float) -> None:
        key = (model, session)
        self._workers[key] = (worker.id, now)
        self._workers.move_to_end(key)
        while len(self._workers) > self.max_sessions:
            self._workers.popitem(last=False)
        # Expired sessions at the old end go as new ones come, so none lingers for long.
        while self._workers:
            _, (_, seen) = next(iter(self._workers.items()))
            if now - seen <= self.ttl:
                break
            self._workers.popitem(last=False)
