"""POST /api/v1/chat/completions: OperateGPT's {input, model_name} → {success, msg, result}."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from tests.inprocess import InProcess, template_registration

pytestmark = pytest.mark.anyio


async def ask(lb: InProcess, model: str, prompt: str, **extra: object) -> httpx.Response:
    return await lb.client.post(
        "/api/v1/chat/completions", json={"input": prompt, "model_name": model, **extra}
    )


async def register(lb: InProcess, model: str, url: str, **fields: Any) -> None:
    await lb.register(**{**template_registration(model, url), **fields})


async def test_a_template_worker_answers_through_response_extract(lb: InProcess) -> None:
    worker_id = await lb.register_template("m", lb.worker("w1"))
    reply = await ask(lb, "m", "who are you?")
    assert reply.status_code == 200
    assert reply.json() == {
        "success": True,
        "msg": "execute succeed",
        "result": "[w1] who are you?",
    }
    assert reply.headers["X-Balancer-Worker"] == worker_id
    assert reply.headers["X-Balancer-Attempts"] == "1"


async def test_placeholders_fill_nested_templates_with_typed_values(lb: InProcess) -> None:
    body = {
        "input": "{USER_PROMPT}",
        "params": {"temperature": "{MODEL_TEMPERATURE}", "model": "{MODEL_NAME}"},
        "history": [{"q": "prefix {USER_PROMPT}"}],
    }
    await register(
        lb, "m", lb.worker("w1"), body=body, response_extract="data.items[].attributes.request"
    )
    reply = await ask(lb, "m", "hi", temperature=0.2)
    assert orjson.loads(reply.json()["result"]) == {
        "input": "hi",
        "params": {"temperature": 0.2, "model": "m"},
        "history": [{"q": "prefix hi"}],
    }


@pytest.mark.parametrize("extract", [None, ""])
async def test_without_response_extract_the_result_is_the_body_as_text(
    lb: InProcess, extract: str | None
) -> None:
    await register(lb, "m", lb.worker("w1"), response_extract=extract)
    result = (await ask(lb, "m", "raw")).json()["result"]
    assert orjson.loads(result)["data"]["items"][0]["attributes"]["answer"] == "[w1] raw"


async def test_get_workers_take_the_prompt_in_the_url(lb: InProcess) -> None:
    url = lb.worker("w1")
    await lb.register(
        model_name="m",
        req_type="GET",
        req_url_template=f"{url}/api/generate?input={{USER_PROMPT}}",
        response_extract="data.items[0].attributes.answer",
    )
    assert (await ask(lb, "m", "a b&c")).json()["result"] == "[w1] a b&c"


async def test_an_openai_worker_serves_the_operategpt_endpoint(lb: InProcess) -> None:
    await lb.register_openai("m", lb.worker("w2"))
    assert (await ask(lb, "m", "hello")).json()["result"] == "[w2] hello"


async def test_concurrent_prompts_each_get_their_own_answer(lb: InProcess) -> None:
    for name in ("w1", "w2", "w3"):
        await register(lb, "m", lb.worker(name, latency=0.005), strategy="round_robin")
    prompts = [f"prompt number {i}" for i in range(60)]
    replies = await asyncio.gather(*(ask(lb, "m", prompt) for prompt in prompts))
    answers = [reply.json()["result"] for reply in replies]
    for prompt, answer in zip(prompts, answers, strict=True):
        assert answer.endswith("] " + prompt)
    assert {answer.split("]")[0] for answer in answers} == {"[w1", "[w2", "[w3"}


async def test_an_unknown_model_is_404_in_the_operategpt_words(lb: InProcess) -> None:
    reply = await ask(lb, "no-such-model", "hi")
    assert reply.status_code == 404
    assert reply.json() == {
        "success": False,
        "msg": "The request model(no-such-model) not exist in llm worker manager",
    }


@pytest.mark.parametrize(
    "body",
    [
        {"model_name": "m"},
        {"input": "", "model_name": "m"},
        {"input": 5, "model_name": "m"},
        {"input": "hi"},
        {"input": "hi", "model_name": "m", "temperature": "hot"},
        {"input": "hi", "model_name": "m", "temperature": True},
    ],
)
async def test_bad_inference_input_is_a_400(lb: InProcess, body: dict[str, object]) -> None:
    reply = await lb.client.post("/api/v1/chat/completions", json=body)
    assert reply.status_code == 400
    assert reply.json()["success"] is False


async def test_when_the_only_worker_fails_the_503_names_the_model_and_what_it_said(
    lb: InProcess,
) -> None:
    url = lb.worker("w1", fail_rate=1.0, fail_status=500)
    worker = await lb.register_template("m", url)
    reply = await ask(lb, "m", "hi")
    assert reply.status_code == 503
    assert reply.json()["success"] is False
    message = reply.json()["msg"]
    assert message.startswith("model m: ")
    assert f"worker {worker} answered HTTP 500" in message
    assert url not in message  # errors reach clients: never a worker's URL


async def test_a_missing_extract_path_names_the_path(lb: InProcess) -> None:
    await register(lb, "m", lb.worker("w1"), response_extract="data.items[].attributes.missing")
    reply = await ask(lb, "m", "hi")
    assert reply.status_code == 503
    assert "data.items[0].attributes.missing" in reply.json()["msg"]


async def test_a_non_json_body_with_an_extract_path_is_a_failure(lb: InProcess) -> None:
    url = f"{lb.worker('w1')}/api/text"
    await register(lb, "m", url, req_url_template=url)
    reply = await ask(lb, "m", "hi")
    assert reply.status_code == 503
    assert "not JSON" in reply.json()["msg"]
    assert "data.items[].attributes.answer" in reply.json()["msg"]
    assert url not in reply.json()["msg"]


async def test_a_plain_text_worker_needs_no_extract(lb: InProcess) -> None:
    url = f"{lb.worker('w1')}/api/text"
    await register(lb, "m", url, req_url_template=url, response_extract=None)
    assert (await ask(lb, "m", "plain")).json()["result"] == "[w1] plain"


async def test_a_workers_404_means_it_cannot_serve_so_every_worker_is_tried(
    lb: InProcess,
) -> None:
    for name in ("w1", "w2", "w3"):
        url = lb.worker(name)
        await register(lb, "m", url, req_url_template=f"{url}/nothing-here")
    reply = await ask(lb, "m", "hi")
    assert reply.status_code == 503
    assert "HTTP 404" in reply.json()["msg"]
    assert reply.headers["X-Balancer-Attempts"] == "3"


async def test_the_callers_own_mistake_keeps_its_status_and_is_not_retried(
    lb: InProcess,
) -> None:
    for name in ("w1", "w2"):
        await lb.register_template("m", lb.worker(name, fail_rate=1.0, fail_status=422))
    reply = await ask(lb, "m", "hi")
    assert reply.status_code == 422
    assert "HTTP 422" in reply.json()["msg"]
    assert reply.headers["X-Balancer-Attempts"] == "1"


async def test_an_unreachable_worker_is_a_503_not_a_crash(lb: InProcess) -> None:
    await lb.register_template("m", lb.worker("gone"))
    lb.fleet.stopped.add("gone")
    reply = await ask(lb, "m", "hi")
    assert reply.status_code == 503
    assert "cannot connect" in reply.json()["msg"]


async def test_a_dead_worker_is_failed_over_to_another(lb: InProcess) -> None:
    await lb.register_template("m", lb.worker("gone"), strategy="round_robin")
    await lb.register_template("m", lb.worker("w3"))
    lb.fleet.stopped.add("gone")
    for _ in range(4):
        reply = await ask(lb, "m", "still served")
        assert reply.status_code == 200
        assert reply.json()["result"] == "[w3] still served"
