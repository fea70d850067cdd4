"""The simulated engine's scheduler and prefix cache, on its own clock (the sum of step times)."""

from __future__ import annotations

import pytest

from balancer.fakes.engine import Engine, EngineConfig, Request, TooLong, block_hashes


def words(n: int, prefix: str = "w") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def run_until_done(engine: Engine, *requests: Request) -> dict[int, float]:
    """Steps until those requests finish; returns each one's time to first token (by index)."""
    now = 0.0
    first: dict[int, float] = {}
    while not all(r.finished for r in requests):
        step = engine.step()
        assert step.duration > 0 or not engine.has_work()
        now += step.duration
        for request, _ in step.tokens:
            if request in requests:
                first.setdefault(requests.index(request), now)
    return first


def config(**changes: float) -> EngineConfig:
    base: dict[str, float] = {
        "slots": 2,
        "cache_blocks": 64,
        "block_size": 4,
        "prefill_tokens_per_s": 100.0,
        "decode_step": 0.01,
        "decode_step_per_request": 0.005,
        "max_tokens": 3,
    }
    base.update(changes)
    return EngineConfig(**base)  # type: ignore[arg-type]


def test_a_block_is_named_by_its_tokens_and_everything_before_it() -> None:
    a = block_hashes(["x", "y", "z", "w"], 2)
    b = block_hashes(["q", "y", "z", "w"], 2)
    assert len(a) == 2
    assert a[0] != b[0] and a[1] != b[1]  # same tokens, other prefix: another block
    assert block_hashes(["x", "y", "z"], 2) == a[:1]  # a partial block has no name


def test_prefill_time_is_proportional_to_the_prompt_tokens_not_in_cache() -> None:
    engine = Engine(config(max_tokens=1))
    prompt = words(40)
    cold = engine.submit(prompt)
    assert run_until_done(engine, cold)[0] == pytest.approx(40 / 100 + 0.01)
    assert cold.cached_tokens == 0
    warm = engine.submit(prompt + words(4, "new"))
    ttft = run_until_done(engine, warm)[0]
    assert warm.cached_tokens == 40
    assert ttft == pytest.approx(4 / 100 + 0.01)
    assert (engine.prefix_cache_queries, engine.prefix_cache_hits) == (84, 40)


def test_at_least_one_prompt_token_is_computed_even_when_all_are_cached() -> None:
    engine = Engine(config(max_tokens=1))
    run_until_done(engine, engine.submit(words(8)))
    again = engine.submit(words(8))
    run_until_done(engine, again)
    assert again.cached_tokens == 7


def test_requests_beyond_the_slots_wait_in_a_queue() -> None:
    engine = Engine(config(slots=2, max_tokens=5))
    requests = [engine.submit(words(4, str(i))) for i in range(5)]
    engine.step()
    assert (len(engine.running), len(engine.waiting)) == (2, 3)
    first = run_until_done(engine, *requests)
    assert first[2] > first[1] and first[4] > first[3]


def test_a_decode_step_takes_longer_the_more_requests_run() -> None:
    engine = Engine(config(slots=4, max_tokens=10, prefill_tokens_per_s=1e9))
    engine.submit(words(4))
    engine.step()
    alone = engine.step().duration
    for i in range(3):
        engine.submit(words(4, f"x{i}"))
    engine.step()
    together = engine.step().duration
    assert alone == pytest.approx(0.01)
    assert together == pytest.approx(0.01 + 3 * 0.005)


def test_tokens_come_one_per_step_and_usage_adds_up() -> None:
    engine = Engine(config(max_tokens=4), answer="[a] hello")
    request = engine.submit(words(3))
    outputs = []
    while not request.finished:
        outputs += [token for r, token in engine.step().tokens if r is request]
    assert outputs == ["[a]", "hello", "[a]", "hello"]
    assert engine.generation_tokens == 4 and engine.prompt_tokens == 3


def test_the_answer_is_cached_so_the_next_turn_of_a_conversation_hits() -> None:
    engine = Engine(config(max_tokens=8), answer="a b c d e f g h")
    turn1 = words(8)
    first = engine.submit(turn1)
    run_until_done(engine, first)
    turn2 = turn1 + first.output + words(4, "user")
    second = engine.submit(turn2)
    run_until_done(engine, second)
    assert second.cached_tokens == 16  # the prompt and the whole answer: four full blocks


def test_free_cached_blocks_are_evicted_least_recently_used_first() -> None:
    # 6 blocks of 4: each request holds 2 prompt blocks + 1 for its answer while it runs.
    engine = Engine(config(cache_blocks=6, max_tokens=1, slots=1))
    a, b = words(8, "a"), words(8, "b")
    run_until_done(engine, engine.submit(a))
    run_until_done(engine, engine.submit(b))
    run_until_done(engine, engine.submit(a))  # a is now the more recently used
    run_until_done(engine, engine.submit(words(8, "c")))  # needs room: evicts b, not a
    again_a, again_b = engine.submit(a), engine.submit(b)
    run_until_done(engine, again_a, again_b)
    assert again_a.cached_tokens == 7
    assert again_b.cached_tokens == 0
    assert engine.cached_blocks <= 6


def test_resetting_the_prefix_cache_forgets_it_but_not_while_requests_hold_blocks() -> None:
    engine = Engine(config(max_tokens=2))
    prompt = words(8)
    run_until_done(engine, engine.submit(prompt))
    running = engine.submit(words(8, "other"))
    engine.step()
    assert not engine.reset_prefix_cache()  # a request holds blocks: nothing is forgotten
    run_until_done(engine, running)
    hits = engine.prefix_cache_hits
    assert engine.reset_prefix_cache()
    assert engine.cached_blocks == 0
    again = engine.submit(prompt)
    run_until_done(engine, again)
    assert again.cached_tokens == 0
    assert engine.prefix_cache_hits == hits  # the counters go on, as vLLM's do


def test_kv_cache_usage_counts_blocks_held_by_running_requests() -> None:
    engine = Engine(config(cache_blocks=10, max_tokens=4, slots=2))
    assert engine.kv_cache_usage == 0.0
    request = engine.submit(words(8))  # 8 + 4 tokens: 3 blocks
    engine.step()
    assert engine.kv_cache_usage == pytest.approx(0.3)
    run_until_done(engine, request)
    assert engine.kv_cache_usage == 0.0  # its blocks stay cached, but are free
    assert engine.cached_blocks == 3


def test_a_request_waits_while_its_blocks_do_not_fit() -> None:
    engine = Engine(config(cache_blocks=4, max_tokens=4, slots=2))
    first = engine.submit(words(8, "a"))  # 3 blocks
    second = engine.submit(words(8, "b"))  # 3 more: only 1 left
    engine.step()
    assert engine.running == [first] and list(engine.waiting) == [second]
    run_until_done(engine, first, second)


def test_a_request_larger_than_the_cache_is_refused() -> None:
    engine = Engine(config(cache_blocks=2))
    with pytest.raises(TooLong):
        engine.submit(words(20))
    assert not engine.has_work()


def test_an_aborted_request_frees_its_slot_and_blocks() -> None:
    engine = Engine(config(slots=1, max_tokens=50))
    gone = engine.submit(words(8))
    waiting = engine.submit(words(8, "x"))
    engine.step()
    engine.abort(gone)
    assert engine.used_blocks == 0
    engine.step()
    assert engine.running == [waiting]
    engine.abort(waiting)
    engine.abort(waiting)  # twice is harmless
    assert not engine.has_work()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        EngineConfig(slots=0)
    with pytest.raises(ValueError):
        EngineConfig(prefill_tokens_per_s=0)
