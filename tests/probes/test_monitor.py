"""Health as the running balancer sees it: live failures eject a worker whose probes pass, and
a model whose workers are all ejected is still served (panic mode)."""

from __future__ import annotations

import httpx
import pytest
import structlog

from balancer.registry import Worker
from tests.inprocess import InProcess, eventually, in_process

pytestmark = pytest.mark.anyio


async def ask(lb: InProcess, model: str) -> httpx.Response:
    return await lb.client.post(
        "/api/v1/chat/completions", json={"input": "hi", "model_name": model}
    )


def worker_at(lb: InProcess, url: str) -> Worker:
    [worker] = [w for w in lb.parts.registry if w.spec.req_url_template.startswith(url)]
    return worker


async def test_live_failures_eject_a_worker_that_passes_its_probes(lb: InProcess) -> None:
    # Round robin keeps sending the sick worker its share (least_latency would route around it
    # after one failure, and it would never fail five times in a row).
    sick = lb.worker("sick", fail_rate=1.0, fail_status=500)  # its probes still pass
    for url in (sick, lb.worker("a"), lb.worker("b")):
        await lb.register_openai("m", url, strategy="round_robin")
    with structlog.testing.capture_logs() as logs:
        replies = [await ask(lb, "m") for _ in range(30)]
    assert [r.status_code for r in replies] == [200] * 30  # failover hid every failure
    worker = worker_at(lb, sick)
    row = lb.parts.monitor.describe(worker)
    assert row["status"] == "ejected"
    assert row["ejection_reason"] == "passive"
    assert "HTTP 500" in row["last_error"]
    [ejected] = [e for e in logs if e["event"] == "worker_ejected"]
    assert (ejected["worker"], ejected["source"]) == (worker.id, "passive")
    assert lb.sample("balancer_ejections_total", model="m", worker=worker.id, reason="passive") == 1
    assert lb.sample("balancer_worker_up", model="m", worker=worker.id) == 0

    served_before = lb.fleet.workers["sick"].served["/v1/chat/completions"]
    assert [(await ask(lb, "m")).status_code for _ in range(10)] == [200] * 10
    assert lb.fleet.workers["sick"].served["/v1/chat/completions"] == served_before


async def test_panic_mode_routes_when_every_worker_is_ejected() -> None:
    async with in_process(probe_interval=0.01, unhealthy_threshold=2) as lb:
        with structlog.testing.capture_logs() as logs:
            for name in ("p1", "p2"):
                # Probes fail, completions still work.
                await lb.register_openai("m", lb.worker(name, health_status=503))
            await eventually(lambda: {w.status for w in lb.parts.registry} == {"ejected"})
            assert (await lb.client.get("/readyz", params={"model": "m"})).status_code == 503
            replies = [await ask(lb, "m") for _ in range(4)]
        assert [r.status_code for r in replies] == [200] * 4
        assert lb.sample("balancer_panic_total", model="m") == 4
    events = [(e["event"], e.get("model")) for e in logs]
    assert ("panic_routing", "m") in events
    assert ("worker_ejected", "m") in events


async def test_a_worker_whose_probes_fail_is_ejected_and_counted() -> None:
    async with in_process(probe_interval=0.01, unhealthy_threshold=2) as lb:
        await lb.register_openai("m", lb.worker("steady"))
        url = lb.worker("doomed")
        await lb.register_openai("m", url)
        doomed = worker_at(lb, url)
        lb.fleet.stopped.add("doomed")
        await eventually(lambda: doomed.status == "ejected")
        assert (
            lb.sample("balancer_ejections_total", model="m", worker=doomed.id, reason="probe") == 1
        )
        failures = lb.sample("balancer_probe_failures_total", model="m", worker=doomed.id)
        assert failures is not None and failures >= 2
        for _ in range(10):
            reply = await ask(lb, "m")
            assert reply.json()["result"] == "[steady] hi"
            assert reply.headers["X-Balancer-Attempts"] == "1"  # the ejected one is never tried
