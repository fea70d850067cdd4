"""POST /api/v1/chat/completions: OperateGPT's {input, model_name} → {success, msg, result}."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest

from balancer.fakes.processes import WorkerProcess
from tests.e2e.conftest import openai_registration, template_registration, unique_model


def ask(client: httpx.Client, model: str, prompt: str, **extra: object) -> httpx.Response:
    return client.post(
        "/api/v1/chat/completions", json={"input": prompt, "model_name": model, **extra}
    )


def test_a_template_worker_answers_through_response_extract(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    client.post("/api/server/register", json=template_registration(model, workers[0]))
    reply = ask(client, model, "who are you?")
    assert reply.status_code == 200
    assert reply.json() == {
        "success": True,
        "msg": "execute succeed",
        "result": "[w1] who are you?",
    }
    assert reply.headers["X-Balancer-Worker"]
    assert reply.headers["X-Balancer-Attempts"] == "1"


def test_placeholders_fill_nested_templates_with_typed_values(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    body = {
        "input": "{USER_PROMPT}",
        "params": {"temperature": "{MODEL_TEMPERATURE}", "model": "{MODEL_NAME}"},
        "history": [{"q": "prefix {USER_PROMPT}"}],
    }
    client.post(
        "/api/server/register",
        json=template_registration(
            model, workers[0], body=body, response_extract="data.items[].attributes.request"
        ),
    )
    sent = orjson.loads(ask(client, model, "hi", temperature=0.2).json()["result"])
    assert sent == {
        "input": "hi",
        "params": {"temperature": 0.2, "model": model},
        "history": [{"q": "prefix hi"}],
    }


def test_without_response_extract_the_result_is_the_body_as_text(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    for extract in (None, ""):
        model = unique_model()
        registration = template_registration(model, workers[0], response_extract=extract)
        client.post("/api/server/register", json=registration)
        result = ask(client, model, "raw").json()["result"]
        assert orjson.loads(result)["data"]["items"][0]["attributes"]["answer"] == "[w1] raw"


def test_get_workers_take_the_prompt_in_the_url(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    client.post(
        "/api/server/register",
        json={
            "model_name": model,
            "req_type": "GET",
            "req_url_template": f"{workers[0].url}/api/generate?input={{USER_PROMPT}}",
            "response_extract": "data.items[0].attributes.answer",
        },
    )
    assert ask(client, model, "a b&c").json()["result"] == "[w1] a b&c"


def test_an_openai_worker_serves_the_operategpt_endpoint(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    client.post("/api/server/register", json=openai_registration(model, workers[1]))
    assert ask(client, model, "hello").json()["result"] == "[w2] hello"


def test_concurrent_prompts_each_get_their_own_answer(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    for worker in workers:
        client.post(
            "/api/server/register",
            json=template_registration(model, worker, strategy="round_robin"),
        )
    prompts = [f"prompt number {i}" for i in range(60)]
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda p: ask(client, model, p), prompts))
    answers = [r.json()["result"] for r in replies]
    for prompt, answer in zip(prompts, answers, strict=True):
        assert answer.endswith("] " + prompt)
    assert {a.split("]")[0] for a in answers} == {"[w1", "[w2", "[w3"}


def test_unknown_model_is_404_in_the_operategpt_words(client: httpx.Client) -> None:
    reply = ask(client, "no-such-model", "hi")
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
def test_bad_inference_input_is_a_4xx(client: httpx.Client, body: dict[str, object]) -> None:
    reply = client.post("/api/v1/chat/completions", json=body)
    assert reply.status_code == 400
    assert reply.json()["success"] is False


def test_upstream_failure_names_the_worker(
    client: httpx.Client, fresh_worker: WorkerProcess
) -> None:
    model = unique_model()
    client.post("/api/server/register", json=template_registration(model, fresh_worker))
    fresh_worker.control(fail_rate=1.0, fail_status=500)
    reply = ask(client, model, "hi")
    assert reply.status_code == 502
    assert reply.json()["success"] is False
    assert "HTTP 500" in reply.json()["msg"]
    assert fresh_worker.url in reply.json()["msg"]


def test_a_missing_extract_path_names_the_path(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    client.post(
        "/api/server/register",
        json=template_registration(
            model, workers[0], response_extract="data.items[].attributes.missing"
        ),
    )
    reply = ask(client, model, "hi")
    assert reply.status_code == 502
    assert "data.items[0].attributes.missing" in reply.json()["msg"]


def test_a_non_json_body_with_an_extract_path_is_a_failure(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    url = f"{workers[0].url}/api/text"
    client.post(
        "/api/server/register", json=template_registration(model, workers[0], req_url_template=url)
    )
    reply = ask(client, model, "hi")
    assert reply.status_code == 502
    assert "not JSON" in reply.json()["msg"]
    assert "data.items[].attributes.answer" in reply.json()["msg"]
    assert url in reply.json()["msg"]


def test_a_plain_text_worker_needs_no_extract(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    client.post(
        "/api/server/register",
        json=template_registration(
            model, workers[0], req_url_template=f"{workers[0].url}/api/text", response_extract=None
        ),
    )
    assert ask(client, model, "plain").json()["result"] == "[w1] plain"


def test_an_upstream_client_error_keeps_its_status_and_is_not_retried(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    for worker in workers:
        client.post(
            "/api/server/register",
            json=template_registration(
                model, worker, req_url_template=f"{worker.url}/nothing-here"
            ),
        )
    reply = ask(client, model, "hi")
    assert reply.status_code == 404
    assert "HTTP 404" in reply.json()["msg"]
    assert reply.headers["X-Balancer-Attempts"] == "1"
    total = sum(w.served().get("/nothing-here", 0) for w in workers)
    assert total == 1


def test_an_unreachable_worker_is_a_failure_not_a_crash(client: httpx.Client) -> None:
    from balancer.fakes.processes import free_port

    model = unique_model()
    client.post(
        "/api/server/register",
        json={
            "model_name": model,
            "body": {"input": "{USER_PROMPT}"},
            "req_url_template": f"http://127.0.0.1:{free_port()}/api/generate",
        },
    )
    reply = ask(client, model, "hi")
    assert reply.status_code == 502
    assert "cannot connect" in reply.json()["msg"]


def test_a_dead_worker_is_failed_over_to_another(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    from balancer.fakes.processes import free_port

    model = unique_model()
    client.post(
        "/api/server/register",
        json={
            "model_name": model,
            "body": {"input": "{USER_PROMPT}"},
            "req_url_template": f"http://127.0.0.1:{free_port()}/api/generate",
        },
    )
    client.post("/api/server/register", json=template_registration(model, workers[2]))
    for _ in range(4):
        reply = ask(client, model, "still served")
        assert reply.status_code == 200
        assert reply.json()["result"] == "[w3] still served"
