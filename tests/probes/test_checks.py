"""What a probe sends, cheapest first (the httpx layer, with respx)."""

import asyncio
from collections.abc import Iterator

import httpx
import pytest
import respx

from balancer.registry import Worker, parse_spec
from probes.checks import Prober, ProbeResult


def worker(**fields: object) -> Worker:
    return Worker(parse_spec({"model_name": "m", **fields}))


def probe(w: Worker) -> ProbeResult:
    async def run() -> ProbeResult:
        async with httpx.AsyncClient(timeout=1.0) as client:
            return await Prober(client).probe(w)

    return asyncio.run(run())


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


def test_health_url_wins_when_given(mock: respx.MockRouter) -> None:
    route = mock.get("http://h:9/ready").respond(200)
    result = probe(
        worker(api="openai", req_url_template="http://h:9/v1", health_url="http://h:9/ready")
    )
    assert result.ok and route.called


def test_openai_workers_are_asked_for_their_models(mock: respx.MockRouter) -> None:
    route = mock.get("http://h:9/v1/models").respond(200, json={"data": []})
    assert probe(worker(api="openai", req_url_template="http://h:9/v1")).ok
    assert route.called


def test_openai_workers_without_models_fall_back_to_root_health(mock: respx.MockRouter) -> None:
    mock.get("http://h:9/v1/models").respond(404)
    health = mock.get("http://h:9/health").respond(200)
    assert probe(worker(api="openai", req_url_template="http://h:9/v1")).ok
    assert health.called


def test_no_fallback_when_the_server_does_not_answer(mock: respx.MockRouter) -> None:
    mock.get("http://h:9/v1/models").mock(side_effect=httpx.ConnectError("refused"))
    health = mock.get("http://h:9/health").respond(200)
    result = probe(worker(api="openai", req_url_template="http://h:9/v1"))
    assert not result.ok and result.status is None
    assert "ConnectError" in (result.error or "")
    assert not health.called


@pytest.mark.parametrize(
    ("status", "alive"), [(200, True), (404, True), (405, True), (500, False), (503, False)]
)
def test_template_workers_are_alive_if_their_origin_answers_below_500(
    mock: respx.MockRouter, status: int, alive: bool
) -> None:
    mock.get("http://h:9/").respond(status)
    result = probe(worker(req_url_template="http://h:9/api/generate", body={"i": "{USER_PROMPT}"}))
    assert result.ok is alive


def test_probes_carry_the_workers_headers(mock: respx.MockRouter) -> None:
    route = mock.get("http://h:9/v1/models").respond(200)
    probe(
        worker(
            api="openai", req_url_template="http://h:9/v1", header={"Authorization": "Bearer up"}
        )
    )
    assert route.calls.last.request.headers["Authorization"] == "Bearer up"


def test_timeouts_are_failures(mock: respx.MockRouter) -> None:
    mock.get("http://h:9/").mock(side_effect=httpx.ReadTimeout("slow"))
    result = probe(worker(req_url_template="http://h:9/gen", body={"i": "{USER_PROMPT}"}))
    assert not result.ok and "timed out" in (result.error or "")


def test_inference_probes_send_one_token_requests(mock: respx.MockRouter) -> None:
    route = mock.post("http://h:9/v1/chat/completions").respond(200, json={})
    assert probe(
        worker(
            api="openai", req_url_template="http://h:9/v1", probe="inference", upstream_model="up"
        )
    ).ok
    sent = route.calls.last.request
    assert b'"max_tokens":1' in sent.content and b'"model":"up"' in sent.content


def test_template_inference_probes_fill_the_template(mock: respx.MockRouter) -> None:
    route = mock.post("http://h:9/gen").respond(200, json={})
    assert probe(
        worker(
            req_url_template="http://h:9/gen", body={"input": "{USER_PROMPT}"}, probe="inference"
        )
    ).ok
    assert route.calls.last.request.content == b'{"input":"ping"}'
