"""cache_aware: a prompt goes where its prefix went, unless the load is out of balance."""

from __future__ import annotations

import random

from balancer.registry import Worker
from balancer.selection import Selector
from balancer.selection.cache_aware import CacheAware
from balancer.selection.prompt_key import prompt_key
from probes.engine_metrics import EngineLoad
from tests.forwarding.helpers import openai_spec

SYSTEM = "You are a support agent for ACME. Answer politely and precisely. " * 20  # ~1,300 chars


def worker(port: int) -> Worker:
    return Worker(openai_spec(f"h:{port}"))


def fleet(n: int = 4) -> list[Worker]:
    return [worker(i) for i in range(1, n + 1)]


def test_prompts_sharing_a_long_prefix_go_to_one_worker_and_others_spread() -> None:
    policy, workers = CacheAware(random.Random(1)), fleet()
    homes: dict[int, set[str]] = {}
    for tenant in range(8):
        for question in range(10):
            key = f"tenant {tenant}: {SYSTEM}\nuser: question {question}"
            homes.setdefault(tenant, set()).add(policy.pick_for(key, workers, 0.0).id)
    assert all(len(home) == 1 for home in homes.values()), homes
    used = {next(iter(home)) for home in homes.values()}
    assert used == {w.id for w in workers}  # new prefixes go where least is held


def test_every_turn_of_a_conversation_lands_where_its_cache_is() -> None:
    policy, workers = CacheAware(random.Random(2)), fleet()
    history = SYSTEM
    chosen = set()
    for turn in range(6):
        history += f"\nuser: turn {turn}\nassistant: answer {turn} " + "words " * 30
        chosen.add(policy.pick_for(history, workers, 0.0).id)
    assert len(chosen) == 1


def test_an_overloaded_home_gives_way_to_the_least_loaded_worker() -> None:
    policy, fleet_ = CacheAware(random.Random(3), balance_abs=4, balance_rel=1.5), fleet()
    home = policy.pick_for(SYSTEM + "q1", fleet_, 0.0)
    assert policy.pick_for(SYSTEM + "q2", fleet_, 0.0) is home
    home.inflight = 10  # 10 - 0 > 4 and 10 > 1.5 × 0
    third = policy.pick_for(SYSTEM + "q3", fleet_, 0.0)
    assert third is not home
    home.inflight = 0
    home.set_engine_load(EngineLoad(waiting=20, running=8, kv_cache_usage=1.0))
    fourth = policy.pick_for(SYSTEM + "q4", fleet_, 0.0)
    assert fourth is not home  # other clients' load counts too
    home.set_engine_load(None)
    # Balanced again: back to a worker that holds the prefix (home, or where q3 and q4 went).
    assert policy.pick_for(SYSTEM + "q5", fleet_, 0.0) in (home, third, fourth)


def test_an_overloaded_worker_elsewhere_moves_no_prompt_from_its_home() -> None:
    policy, workers = CacheAware(random.Random(7), balance_abs=4, balance_rel=1.5), fleet()
    home = policy.pick_for(SYSTEM + "q1", workers, 0.0)
    elsewhere = next(w for w in workers if w is not home)
    elsewhere.inflight = 30  # the fleet is out of balance, but not because of home
    home.inflight = 2
    assert policy.pick_for(SYSTEM + "q2", workers, 0.0) is home


def test_a_short_shared_prefix_is_not_enough_to_stick() -> None:
    policy, workers = CacheAware(random.Random(4), chunk=16, cache_threshold=0.5), fleet()
    first = policy.pick_for("common start " + "a" * 200, workers, 0.0)
    first.inflight = 1  # now the others are less loaded
    again = policy.pick_for("common start " + "b" * 200, workers, 0.0)
    assert again is not first


def test_among_workers_sent_the_same_prefix_the_least_loaded_wins() -> None:
    policy, (a, b) = CacheAware(random.Random(5)), fleet(2)
    policy._record(SYSTEM, a)
    policy._record(SYSTEM, b)
    a.inflight = 3
    assert policy.pick_for(SYSTEM + "more", [a, b], 0.0) is b


def test_the_tree_is_bounded_and_evicts_longer_prompts_before_their_prefixes() -> None:
    policy, workers = CacheAware(random.Random(6), chunk=10, max_nodes=50), fleet()
    for i in range(100):
        policy.pick_for(f"prefix-000{i:05d}" + "x" * 60, workers, 0.0)
    assert policy.size == 50
    first = policy.prefix_names("prefix-000")[0]
    assert first in policy._nodes  # the shared first piece, touched last each time, survives


def test_without_a_prompt_it_is_least_requests_and_a_removed_worker_is_forgotten() -> None:
    policy, (a, b) = CacheAware(random.Random(7)), fleet(2)
    a.inflight = 5
    assert all(policy.pick([a, b], 0.0) is b for _ in range(20))
    a.inflight = 0
    home = policy.pick_for(SYSTEM, [a, b], 0.0)
    policy.forget(home.id)
    other = b if home is a else a
    other.inflight = 1  # without the memory of home, the least loaded wins: home
    assert policy.pick_for(SYSTEM + "again", [a, b], 0.0) is home
    assert policy.pick_for(SYSTEM, [other], 0.0) is other  # one candidate: no choice


def test_the_prompt_key_is_the_conversation_in_order_or_the_completions_prompt() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ]
    }
    key = prompt_key(chat)
    assert key is not None and key.startswith("<system>S\n<user>")
    assert prompt_key({"prompt": "once upon"}) == "once upon"
    assert prompt_key({"prompt": ["a", "b"]}) == "a\nb"
    assert prompt_key({"input": "hello"}) == "hello"
    assert prompt_key({"prompt": [1, 2]}) is None
    assert prompt_key({"messages": ["not a message"]}) is None


def test_the_thresholds_are_settings_shared_with_sessions() -> None:
    selector = Selector("cache_aware", cache_threshold=0.9, balance_abs=2, balance_rel=1.2)
    policy = selector.policy("m")
    assert isinstance(policy, CacheAware)
    assert (policy.cache_threshold, policy.balance_abs, policy.balance_rel) == (0.9, 2, 1.2)
    assert (selector.sessions.balance_abs, selector.sessions.balance_rel) == (2, 1.2)
