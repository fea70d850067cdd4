"""Choosing a worker: which are selectable (health), then a per-model policy picks one."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from balancer.registry.models import Worker
from balancer.selection.base import Policy
from balancer.selection.round_robin import RoundRobin

POLICIES: dict[str, Callable[[], Policy]] = {
    "round_robin": RoundRobin,
}
DEFAULT_POLICY = "round_robin"


class Selector:
    """Keeps one policy instance per model and applies the health rules before it."""

    def __init__(self, default_policy: str = DEFAULT_POLICY) -> None:
        self._factory = POLICIES[default_policy]
        self._policies: dict[str, Policy] = {}

    def choose(
        self,
        model: str,
        workers: Sequence[Worker],
        *,
        exclude: Collection[str] = (),
        accept: Callable[[Worker], bool] | None = None,
    ) -> tuple[Worker | None, bool]:
        """A worker not in `exclude`, or None. The flag is True when chosen in panic mode.

        Ejected workers are skipped unless every candidate is ejected ("panic mode"): then
        routing to a possibly-down worker beats failing every request.
        """
        candidates = [w for w in workers if w.id not in exclude and (accept is None or accept(w))]
        if not candidates:
            return None, False
        selectable = [w for w in candidates if w.status != "ejected"]
        panic = not selectable
        policy = self._policies.get(model)
        if policy is None:
            policy = self._policies[model] = self._factory()
        return policy.pick(selectable or candidates), panic

    def forget(self, model: str) -> None:
        self._policies.pop(model, None)


__all__ = ["POLICIES", "Policy", "Selector"]
