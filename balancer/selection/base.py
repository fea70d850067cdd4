"""What every selection policy provides. Policies do no I/O and keep only their own counters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from balancer.registry.models import Worker


class Policy(Protocol):
    """Picks one worker of a model among candidates the caller already filtered."""

    def pick(self, candidates: Sequence[Worker]) -> Worker: ...
