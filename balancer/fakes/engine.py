"""The scheduler and prefix cache of a simulated vLLM engine: pure policy, no I/O, no clock.

The engine runs in steps, as vLLM's continuous batching does. Each `step()` admits waiting
requests into free slots (first come, first served, while their KV blocks fit), prefills the
prompt tokens of the newly admitted ones that are not in the prefix cache, and decodes one token
for every running request. It returns how long that step takes on the simulated GPU; the server
(`engine_worker.py`) sleeps that long and then hands out the tokens. Tests sum the durations as
their clock.

The prefix cache holds fixed-size blocks of tokens, each named by the hash of its tokens and of
every token before it (vLLM's automatic prefix caching), so a block is only reused behind the very
same prefix. Blocks held by running requests cannot be evicted; blocks of finished requests stay
cached and are evicted least recently used first when new blocks are needed.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

DEFAULT_SLOTS = 8
DEFAULT_CACHE_BLOCKS = 2048
DEFAULT_BLOCK_SIZE = 16
DEFAULT_PREFILL_TOKENS_PER_S = 20_000.0
DEFAULT_DECODE_STEP = 0.010
DEFAULT_DECODE_STEP_PER_REQUEST = 0.0005
DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    slots: int = DEFAULT_SLOTS
    """Requests decoded together (vLLM's max_num_seqs); more wait in a queue."""
    cache_blocks: int = DEFAULT_CACHE_BLOCKS
    """KV-cache size in blocks (vLLM's num_gpu_blocks)."""
    block_size: int = DEFAULT_BLOCK_SIZE
    """Tokens per block (vLLM's default is 16)."""
    prefill_tokens_per_s: float = DEFAULT_PREFILL_TOKENS_PER_S
    """Prompt tokens computed per second; cached ones cost nothing."""
    decode_step: float = DEFAULT_DECODE_STEP
    """Seconds of one decode step with a single request running."""
    decode_step_per_request: float = DEFAULT_DECODE_STEP_PER_REQUEST
    """Seconds each further running request adds to a decode step."""
    max_tokens: int = DEFAULT_MAX_TOKENS
    """Tokens generated when a request does not say (`max_tokens`)."""

    def __post_init__(self) -> None:
        if min(self.slots, self.cache_blocks, self.block_size, self.max_tokens) < 1:
            raise ValueError("slots, cache_blocks, block_size and max_tokens must be at least 1")
        if self.prefill_tokens_per_s <= 0 or self.decode_step < 0:
            raise ValueError("prefill_tokens_per_s must be positive, decode_step not negative")
        if self.decode_step_per_request < 0:
            raise ValueError("decode_step_per_request must not be negative")


class TooLong(ValueError):
    """A request needs more KV blocks than the whole cache holds (vLLM: exceeds max_model_len)."""


@dataclass(eq=False, slots=True)
class Request:
    prompt: tuple[str, ...]
    max_tokens: int
    output: list[str] = field(default_factory=list)
    cached_tokens: int = 0
    """Prompt tokens found in the prefix cache when it was admitted."""
    finished: bool = False
    _hashes: list[int] = field(default_factory=list)
    """The prefix-cache names of the blocks it holds."""
    _private: int = 0
    """Blocks it holds that no other request can share (its partial last block, its answer)."""


@dataclass(frozen=True, slots=True)
class Step:
    duration: float
    """Simulated seconds the step takes."""
    tokens: list[tuple[Request, str]]
    """The token each running request produced in this step."""
    finished: list[Request]


def block_hashes(tokens: Sequence[str], block_size: int) -> list[int]:
    """The names of the full blocks of `tokens`: each hashes its tokens and the block before."""
    hashes: list[int] = []
    parent = 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash((parent, tuple(tokens[start : start + block_size])))
        hashes.append(parent)
    return hashes


class Engine:
    """Continuous batching over `slots`, a prefix cache of `cache_blocks` blocks."""

    def __init__(self, config: EngineConfig | None = None, *, answer: str = "token") -> None:
        self.config = config or EngineConfig()
        self.answer = answer
        """The words answers are made of, repeated as needed."""
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._cached: OrderedDict[int, int] = OrderedDict()
        """Block name -> how many running requests hold it; least recently used first."""
        self._held = 0
        """Cached blocks that at least one running request holds (they cannot be evicted)."""
        self._private_blocks = 0
        self.prefix_cache_queries = 0
        """Prompt tokens looked up in the prefix cache (vLLM counts tokens, not requests)."""
        self.prefix_cache_hits = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0

    # What vLLM's /metrics reports.

    @property
    def used_blocks(self) -> int:
        return self._held + self._private_blocks

    @property
    def cached_blocks(self) -> int:
        """Blocks in the prefix cache, held or free."""
        return len(self._cached)

    @property
    def kv_cache_usage(self) -> float:
        """Blocks held by running requests over all blocks (cached but free blocks count as
        free, as in vLLM's v1 block pool)."""
        return self.used_blocks / self.config.cache_blocks

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached block, as vLLM's `POST /reset_prefix_cache` does, so a benchmark
        starts each run cold without a restart; False, and nothing forgotten, while requests
        hold blocks. The counters go on, as vLLM's do."""
        if self.used_blocks:
            return False
        self._cached.clear()
        return True

    # Requests.

    def submit(self, prompt: Sequence[str], max_tokens: int | None = None) -> Request:
        """Queue a request; raises TooLong if it could never fit in the cache."""
        wanted = max(1, max_tokens or self.config.max_tokens)
        request = Request(tuple(prompt), wanted)
        if self._blocks_needed(request) > self.config.cache_blocks:
            raise TooLong(
                f"{len(request.prompt)} prompt tokens and {wanted} to generate need more than "
                f"the {self.config.cache_blocks} blocks of {self.config.block_size} tokens "
                f"this engine has"
            )
        self.waiting.append(request)
        return request

    def abort(self, request: Request) -> None:
        """The client left: free its slot or its place in the queue."""
        if request.finished:
            return
        if request in self.running:
            self.running.remove(request)
            self._release(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        request.finished = True

    def step(self) -> Step:
        """One scheduler iteration: admit, prefill, decode one token per running request."""
        prefill = 0
        while self.waiting and len(self.running) < self.config.slots:
            request = self.waiting[0]
            if not self._allocate(request):
                break  # wait for running requests to free blocks
            self.waiting.popleft()
            self.running.append(request)
            prefill += len(request.prompt) - request.cached_tokens
        if not self.running:
            return Step(0.0, [], [])
        c = self.config
        duration = (
            prefill / c.prefill_tokens_per_s
            + c.decode_step
            + c.decode_step_per_request * (len(self.running) - 1)
        )
        words = self.answer.split() or ["token"]
        tokens: list[tuple[Request, str]] = []
        finished: list[Request] = []
        for request in self.running:
            token = words[len(request.output) % len(words)]
            request.output.append(token)
            tokens.append((request, token))
            if len(request.output) >= request.max_tokens:
                finished.append(request)
        self.generation_tokens += len(tokens)
        for request in finished:
            self.running.remove(request)
            self._release(request)
            request.finished = True
        return Step(duration, tokens, finished)

    # The KV cache.

    def _blocks_needed(self, request: Request) -> int:
        return math.ceil((len(request.prompt) + request.max_tokens) / self.config.block_size)

    def _allocate(self, request: Request) -> bool:
        """Hold the blocks the whole request will need (its prompt's cached blocks shared, the
        rest new), evicting free cached blocks as needed; False if they do not fit yet.

        vLLM allocates as it decodes and preempts when it runs out; reserving up front keeps the
        model simple and never preempts."""
        size = self.config.block_size
        prompt_hashes = block_hashes(request.prompt, size)
        hit = 0
        for name in prompt_hashes:
            if name not in self._cached:
                break
            hit += 1
        new_shared = len(prompt_hashes) - hit
        private = self._blocks_needed(request) - len(prompt_hashes)
        # Blocks this request would hit are free-but-cached ones it takes, not ones to evict.
        reusable_free = sum(1 for name in prompt_hashes[:hit] if not self._cached[name])
        if new_shared + private + reusable_free > self.config.cache_blocks - self.used_blocks:
            return False
        self.prefix_cache_queries += len(request.prompt)
        # At least the last prompt token is computed, as in vLLM, to produce the first logits.
        request.cached_tokens = min(hit * size, max(len(request.prompt) - 1, 0))
        self.prefix_cache_hits += request.cached_tokens
        self.prompt_tokens += len(request.prompt)
        for name in prompt_hashes[:hit]:
            self._hold(name)
            self._cached.move_to_end(name)
        self._evict(new_shared + private)
        for name in prompt_hashes[hit:]:
            self._cached[name] = 0
            self._hold(name)
        request._hashes = prompt_hashes
        request._private = private
        self._private_blocks += private
        return True

    def _hold(self, name: int) -> None:
        if not self._cached[name]:
            self._held += 1
        self._cached[name] += 1

    def _evict(self, needed: int) -> None:
        """Make room for `needed` new blocks, dropping free cached blocks, oldest use first."""
        excess = len(self._cached) + self._private_blocks + needed - self.config.cache_blocks
        if excess <= 0:
            return
        victims: list[int] = []
        for name, holders in self._cached.items():
            if not holders:
                victims.append(name)
                if len(victims) == excess:
                    break
        for name in victims:
            del self._cached[name]

    def _release(self, request: Request) -> None:
        """The request's blocks become free; its full blocks stay cached, the answer included
        (the next turn of a conversation starts with it)."""
        for name in request._hashes:
            self._cached[name] -= 1
            if not self._cached[name]:
                self._held -= 1
        self._private_blocks -= request._private
        size = self.config.block_size
        whole = block_hashes(request.prompt + tuple(request.output), size)
        for name in whole[len(request._hashes) :]:
            # Cache the blocks the answer completed, as free blocks, while there is room.
            if name in self._cached:
                continue
            self._evict(1)
            if len(self._cached) + self._private_blocks >= self.config.cache_blocks:
                break  # every block is held: nothing to evict
            self._cached[name] = 0
        request._hashes, request._private = [], 0
