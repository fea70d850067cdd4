"""Cache aware: send a prompt to the worker most likely to hold its prefix in its KV cache, unless
the load is out of balance; SGLang's and vllm-router's `cache_aware`, in a form cheap in Python.

What each worker was recently sent is kept in an approximate prefix tree: the prompt's text cut
into `chunk` characters, each piece named by its hash chained to the one before (as vLLM names
its KV blocks), so one dictionary look-up per piece walks the tree. A node records which workers
were sent that prefix. The tree holds at most `max_nodes` nodes per model; the least recently used
go first, and a prompt touches its nodes deepest first so that a prefix is evicted after the
longer prompts that extend it, as an engine's LRU cache does.

A pick, after SGLang's router's:
1. If some workers were sent at least `cache_threshold` of the prompt, the least loaded of those
   that were sent the longest part of it (the prompt's home), unless its load (requests in
   flight + the engine's queue) is out of balance with the least loaded worker's, `home - min >
   balance_abs` and `home > balance_rel × min`.
2. Else the least loaded worker, the one holding the fewest nodes on a tie (the most room).
The chosen worker is then recorded for the prompt's prefixes. SGLang checks the balance of the
whole fleet (max - min) instead, so one overloaded worker sends every prompt, wherever its home,
to the least loaded worker, which holds none of their prefixes; checking the home alone keeps
the other prompts' caches.
"""

from __future__ import annotations

import random as _random
from collections import OrderedDict
from collections.abc import Sequence

from balancer.config import (
    DEFAULT_BALANCE_ABS_THRESHOLD,
    DEFAULT_BALANCE_REL_THRESHOLD,
    DEFAULT_CACHE_THRESHOLD,
)
from balancer.registry.models import Worker
from balancer.selection.least_requests import LeastRequests

DEFAULT_CHUNK = 256
"""Characters per tree node: some 60 tokens, four of vLLM's KV blocks. A prompt costs a hash and
a look-up or two per node, so larger nodes are cheaper; a conversation's next turn loses at most
one node of its match (the last, partly filled one)."""
DEFAULT_MAX_NODES = 1 << 15
"""Nodes per model: 8 MiB of prompt text's worth, about 11 MB of memory (some 340 bytes a
node)."""


def load_of(worker: Worker) -> float:
    return (worker.inflight + worker.engine_queue) / worker.spec.weight


def out_of_balance(load: float, lightest: float, balance_abs: float, balance_rel: float) -> bool:
    """Whether `load` is too far above the `lightest` load to keep a prompt's (or session's)
    worker: by more than `balance_abs` and more than `balance_rel` times."""
    return load - lightest > balance_abs and load > balance_rel * lightest


class CacheAware:
    def __init__(
        self,
        rng: _random.Random | None = None,
        *,
        chunk: int = DEFAULT_CHUNK,
        max_nodes: int = DEFAULT_MAX_NODES,
        cache_threshold: float = DEFAULT_CACHE_THRESHOLD,
        balance_abs: float = DEFAULT_BALANCE_ABS_THRESHOLD,
        balance_rel: float = DEFAULT_BALANCE_REL_THRESHOLD,
    ) -> None:
        self._fallback = LeastRequests(rng)
        self.chunk = chunk
        self.max_nodes = max_nodes
        self.cache_threshold = cache_threshold
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel
        self._nodes: OrderedDict[int, set[str]] = OrderedDict()
        """Prefix name -> ids of the workers sent it; least recently used first."""
        self._held: dict[str, int] = {}
        """Worker id -> nodes that name it."""

    def pick(self, candidates: Sequence[Worker], now: float) -> Worker:
        """Without a prompt to go by: least requests."""
        return self._fallback.pick(candidates, now)

    def pick_for(self, key: str, candidates: Sequence[Worker], now: float) -> Worker:
        """The worker for a prompt whose text (the rendered conversation) is `key`."""
        if len(candidates) == 1 or not key:
            chosen = candidates[0] if len(candidates) == 1 else self.pick(candidates, now)
            self._record(key, chosen)
            return chosen
        names = self.prefix_names(key)
        loads = [load_of(w) for w in candidates]
        lightest = min(
            range(len(candidates)),
            key=lambda i: (loads[i], self._held.get(candidates[i].id, 0)),
        )
        home = self._home(names, len(key), candidates, loads)
        if home is None or self.overloaded(loads[home], loads[lightest]):
            home = lightest
        chosen = candidates[home]
        self._record_names(names, chosen)
        return chosen

    def overloaded(self, load: float, lightest: float) -> bool:
        return out_of_balance(load, lightest, self.balance_abs, self.balance_rel)

    def _home(
        self, names: list[int], length: int, candidates: Sequence[Worker], loads: list[float]
    ) -> int | None:
        """The least loaded of the candidates sent the longest part of the prompt, if that is
        at least `cache_threshold` of it."""
        ids = {w.id: i for i, w in enumerate(candidates)}
        nodes = self._nodes
        matched = 0
        deepest: set[str] | None = None
        for name in names:
            sent = nodes.get(name)
            if not sent or sent.isdisjoint(ids):
                break
            matched += 1
            deepest = sent
        holders = [ids[wid] for wid in deepest if wid in ids] if deepest else []
        if holders and min(matched * self.chunk, length) >= self.cache_threshold * length:
            return min(holders, key=lambda i: loads[i])
        return None

    def prefix_names(self, key: str) -> list[int]:
        """The names of the key's pieces, each chained to the one before (the last may be
        shorter than a chunk)."""
        names: list[int] = []
        parent = 0
        for start in range(0, len(key), self.chunk):
            parent = hash((parent, key[start : start + self.chunk]))
            names.append(parent)
        return names

    def _record(self, key: str, worker: Worker) -> None:
        if key:
            self._record_names(self.prefix_names(key), worker)

    def _record_names(self, names: list[int], worker: Worker) -> None:
        nodes, held, wid = self._nodes, self._held, worker.id
        # Deepest first: a prefix stays more recent than the prompts that extend it.
        for name in reversed(names):
            sent = nodes.get(name)
            if sent is None:
                nodes[name] = {wid}
                held[wid] = held.get(wid, 0) + 1
            else:
                nodes.move_to_end(name)
                if wid not in sent:
                    sent.add(wid)
                    held[wid] = held.get(wid, 0) + 1
        while len(nodes) > self.max_nodes:
            _, gone = nodes.popitem(last=False)
            for other in gone:
                held[other] -= 1

    @property
    def size(self) -> int:
        return len(self._nodes)

    def observe(self, worker: Worker, seconds: float, now: float) -> None:
        pass

    def observe_failure(self, worker: Worker, now: float) -> None:
        pass

    def forget(self, worker_id: str) -> None:
        """A removed worker holds nothing: its name leaves every node (nodes left empty stay
        until evicted, and match no one)."""
        if self._held.pop(worker_id, None) is None:
            return
        for sent in self._nodes.values():
            sent.discard(worker_id)
