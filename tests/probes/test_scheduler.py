"""Probe jobs follow the registry: a registered worker is probed on its own timer, a removed one
no longer."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import structlog

from probes.scheduler import PROBE_TICK, TickedIntervalTrigger, on_tick
from tests.inprocess import eventually, in_process

pytestmark = pytest.mark.anyio


async def test_register_and_offline_add_and_remove_probe_jobs() -> None:
    async with in_process(probe_interval=0.01) as lb:
        url = lb.worker("jobs")
        worker_id = await lb.register_openai("m", url)
        assert lb.parts.probes.has_job(worker_id)
        served = lb.fleet.workers["jobs"].served
        await eventually(lambda: served.get("/v1/models", 0) >= 2)
        await lb.client.post(
            "/api/server/offline", json={"model_name": "m", "req_url_template": f"{url}/v1"}
        )
        assert not lb.parts.probes.has_job(worker_id)
        await asyncio.sleep(0.02)  # a probe already running may still land
        count = served["/v1/models"]
        await asyncio.sleep(0.05)  # five intervals
        assert served["/v1/models"] == count


async def test_a_new_worker_turns_healthy_after_its_first_probe() -> None:
    async with in_process(probe_interval=0.01) as lb:
        await lb.register_openai("m", lb.worker("new"))
        [worker] = lb.parts.registry
        await eventually(lambda: worker.status == "healthy")
        served = lb.fleet.workers["new"].served
        assert served["/v1/models"] >= 1  # probed the cheap way, not with a completion
        assert "/v1/chat/completions" not in served


async def test_probes_do_not_carry_the_id_of_the_request_that_registered_the_worker() -> None:
    """Only a request's own events carry its id; probes run in a context of their own."""
    async with in_process(probe_interval=0.01) as lb:
        url = lb.worker("w")
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs:
            await lb.client.post(
                "/api/server/register",
                json={"model_name": "m", "api": "openai", "req_url_template": f"{url}/v1"},
                headers={"X-Request-ID": "trace-register"},
            )
            [worker] = lb.parts.registry
            await eventually(lambda: worker.status == "healthy")
            lb.fleet.stopped.add("w")
            await eventually(lambda: worker.status == "ejected")
    [registered] = [e for e in logs if e["event"] == "worker_registered"]
    assert registered["request_id"] == "trace-register"
    probed = [e for e in logs if e["event"] in ("worker_healthy", "worker_ejected")]
    assert [e["event"] for e in probed] == ["worker_healthy", "worker_ejected"]
    assert [e.get("request_id") for e in probed] == [None, None]


async def test_shutdown_cancels_probes_under_way_so_none_fails_for_the_closed_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with in_process(probe_interval=0.01) as lb:
        # An inference probe of a worker that takes a minute to answer.
        url = lb.worker("slow", latency=60)
        await lb.register_openai("m", url, probe="inference")
        await eventually(lambda: bool(lb.parts.probes._in_flight))
        with structlog.testing.capture_logs() as logs:
            await lb.parts.probes.shutdown()
            await asyncio.sleep(0.05)  # APScheduler logs a job's end from a callback
        assert not lb.parts.probes._in_flight
        assert [e for e in logs if e["log_level"] in ("error", "warning")] == []
        assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


def test_probes_start_on_ticks_so_those_due_together_share_one_wake_up() -> None:
    trigger = TickedIntervalTrigger(seconds=5, jitter=0.5, tick=0.1)
    now = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    previous = None
    for _ in range(200):
        fire = trigger.get_next_fire_time(previous, now)
        assert fire is not None
        assert round(fire.timestamp() * 10, 6) == round(fire.timestamp() * 10)
        if previous is not None:
            # The interval and its jitter as APScheduler draws them, then at most one tick more.
            assert 5 <= (fire - previous).total_seconds() < 5 + 0.5 + 0.1
        previous = now = fire


def test_a_moment_on_a_tick_stays_there() -> None:
    moment = datetime(2026, 1, 1, 12, 0, 0, 300000, tzinfo=UTC)
    assert on_tick(moment, 0.1) == moment
    assert on_tick(moment + timedelta(microseconds=1), 0.1) == moment + timedelta(seconds=0.1)


async def test_the_tick_is_at_most_a_tenth_of_the_interval() -> None:
    async with in_process(probe_interval=0.01) as lb:
        assert lb.parts.probes.tick == pytest.approx(0.001)
    async with in_process(probe_interval=5) as lb:
        assert lb.parts.probes.tick == pytest.approx(PROBE_TICK)


VLLM = (
    'vllm:num_requests_waiting{engine="0",model_name="m"} 5.0\n'
    'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
    'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
)


async def test_each_probe_reads_the_engines_load_and_a_failed_one_forgets_it() -> None:
    async with in_process(probe_interval=0.01) as lb:
        await lb.register_openai("m", lb.worker("vllm", metrics=VLLM))
        await lb.register_openai("m", lb.worker("plain"))
        engine, plain = lb.parts.registry
        await eventually(lambda: engine.engine is not None)
        assert engine.engine is not None and engine.engine.queue_depth == 8
        assert engine.engine_queue == 8 and engine.describe()["kv_cache_usage"] == 0.25
        await eventually(lambda: plain.status == "healthy")
        assert plain.engine is None and plain.describe()["queue_depth"] is None
        # /metrics is not asked again of a worker that has none, however often it is probed.
        served = lb.fleet.workers["plain"].served
        await eventually(lambda: served.get("/v1/models", 0) >= 4)
        assert served.get("/metrics") == 1
        lb.fleet.stopped.add("vllm")
        await eventually(lambda: engine.engine is None)
        assert engine.engine_queue == 0
