"""One prompt to either kind of worker, the answer's text back: a template worker's templates filled
afresh and its answer read at `response_extract`; an OpenAI worker asked for a chat completion."""

from __future__ import annotations

from typing import Any

import pytest

from balancer.errors import BadRequest, UpstreamError
from balancer.fakes.transport import FakeResponse
from balancer.forwarding.lease import Lease
from balancer.forwarding.openai_format import estimate_tokens
from balancer.forwarding.prompt import complete_text, template_request
from balancer.registry import Worker, parse_spec
from tests.conftest import FakeClock
from tests.forwarding.helpers import Answer, by_host, completion, lease_on, openai_spec, status

pytestmark = pytest.mark.anyio

BODY_TEMPLATE = {
    "input": "{USER_PROMPT}",
    "model": "{MODEL_NAME}",
    "temperature": "{MODEL_TEMPERATURE}",
    "meta": {"note": "asked: {USER_PROMPT}", "tags": ["{MODEL_NAME}", "fixed"]},
}


def template_worker(**fields: Any) -> Worker:
    """A template worker of model `t` at http://t1/generate."""
    spec = {
        "model_name": "t",
        "req_url_template": "http://t1/generate",
        "body": BODY_TEMPLATE,
        "response_extract": "data.items[].answer",
        **fields,
    }
    return Worker(parse_spec(spec))


def extracted(answer: Any) -> FakeResponse:
    """A body with `answer` at data.items[].answer."""
    return FakeResponse(json={"data": {"items": [{"answer": answer}]}})


async def ask(
    worker: Worker,
    answer: Answer,
    clock: FakeClock,
    prompt: str = "hi",
    temperature: float | None = None,
) -> tuple[str, Lease, Any]:
    """The text `worker` answers to `prompt`, the lease it ran under, and the request sent."""
    host = "t1" if worker.spec.api == "template" else "w1"
    transport = by_host({host: answer})
    lease = lease_on(worker, clock=clock)
    text = await complete_text(transport, lease, prompt, temperature)
    [sent] = transport.sent
    return text, lease, sent


# Template workers


async def test_a_template_worker_gets_its_body_template_filled(clock: FakeClock) -> None:
    worker = template_worker(upstream_model="llama-3")

    _, _, sent = await ask(worker, extracted("ok"), clock, prompt="What is 2+2?")

    assert (sent.method, sent.url) == ("POST", "http://t1/generate")
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.json() == {
        "input": "What is 2+2?",
        "model": "llama-3",
        "temperature": 0.7,  # the default, as a number
        "meta": {"note": "asked: What is 2+2?", "tags": ["llama-3", "fixed"]},
    }


async def test_the_temperature_given_is_filled_in_as_a_number(clock: FakeClock) -> None:
    _, _, sent = await ask(template_worker(), extracted("ok"), clock, temperature=0.2)

    assert sent.json()["temperature"] == 0.2


async def test_the_template_is_filled_afresh_for_every_prompt(clock: FakeClock) -> None:
    worker = template_worker()

    _, _, first = await ask(worker, extracted("1"), clock, prompt="first prompt")
    _, _, second = await ask(worker, extracted("2"), clock, prompt="second prompt")

    assert first.json()["input"] == "first prompt"
    assert second.json()["input"] == "second prompt"
    assert "first prompt" not in (second.body or b"").decode()
    assert worker.spec.body == BODY_TEMPLATE


async def test_a_string_body_template_is_sent_as_text(clock: FakeClock) -> None:
    worker = template_worker(body="Question: {USER_PROMPT}", response_extract=None)

    _, _, sent = await ask(worker, FakeResponse(body=b"ok"), clock, prompt="why?")

    assert sent.body == b"Question: why?"
    assert sent.headers["Content-Type"] == "text/plain; charset=utf-8"


async def test_a_get_template_puts_the_prompt_in_the_url_and_sends_no_body(
    clock: FakeClock,
) -> None:
    worker = template_worker(
        req_type="GET", req_url_template="http://t1/ask?q={USER_PROMPT}", body=None
    )

    _, _, sent = await ask(worker, extracted("ok"), clock, prompt="a&b c")

    assert (sent.method, sent.url, sent.body) == ("GET", "http://t1/ask?q=a%26b%20c", None)
    assert "Content-Type" not in sent.headers


async def test_the_answer_is_read_at_response_extract(clock: FakeClock) -> None:
    text, _, _ = await ask(template_worker(), extracted("four"), clock)

    assert text == "four"


async def test_a_value_at_response_extract_that_is_not_a_string_is_given_as_json(
    clock: FakeClock,
) -> None:
    text, _, _ = await ask(template_worker(), extracted({"n": 4}), clock)

    assert text == '{"n":4}'


async def test_without_response_extract_the_whole_body_is_the_answer(clock: FakeClock) -> None:
    worker = template_worker(response_extract=None)

    text, _, _ = await ask(worker, FakeResponse(body="plain caf\u00e9".encode()), clock)

    assert text == "plain caf\u00e9"


async def test_a_body_that_is_not_json_is_a_retryable_failure_naming_the_extract_path(
    clock: FakeClock,
) -> None:
    worker = template_worker()

    with pytest.raises(UpstreamError) as raised:
        await ask(worker, FakeResponse(body=b"<html>busy</html>"), clock)

    error = raised.value
    assert error.retryable is True
    assert error.message == (
        f"worker {worker.id} returned a body that is not JSON, "
        "so response_extract 'data.items[].answer' cannot be applied"
    )
    assert (error.model, error.worker) == ("t", worker.id)


async def test_a_body_without_a_value_at_the_extract_path_is_a_retryable_failure(
    clock: FakeClock,
) -> None:
    worker = template_worker()

    with pytest.raises(UpstreamError) as raised:
        await ask(worker, FakeResponse(json={"data": {"items": []}}), clock)

    assert raised.value.retryable is True
    assert raised.value.message == (
        f"worker {worker.id} has no value at 'data.items[0]' "
        "(response_extract 'data.items[0].answer')"
    )


@pytest.mark.parametrize(("code", "retryable"), [(503, True), (429, True), (400, False)])
async def test_a_template_worker_answering_an_error_status_fails(
    clock: FakeClock, code: int, retryable: bool
) -> None:
    with pytest.raises(UpstreamError) as raised:
        await ask(template_worker(), status(code), clock)

    assert raised.value.retryable is retryable
    assert raised.value.upstream_status == code


async def test_a_template_worker_answer_has_its_tokens_estimated(clock: FakeClock) -> None:
    text, lease, _ = await ask(template_worker(), extracted("the answer"), clock, prompt="hello")

    record = lease.record
    assert text == "the answer"
    assert (record.input_tokens, record.output_tokens) == (
        estimate_tokens("hello"),
        estimate_tokens("the answer"),
    )
    assert record.tokens_estimated is True


# OpenAI workers


async def test_an_openai_worker_is_asked_for_a_chat_completion_of_its_upstream_model(
    clock: FakeClock,
) -> None:
    worker = Worker(openai_spec("w1", upstream_model="llama-3-8b"))

    text, _, sent = await ask(worker, completion("4"), clock, prompt="2+2?")

    assert text == "4"
    assert (sent.method, sent.url) == ("POST", "http://w1/v1/chat/completions")
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.json() == {
        "model": "llama-3-8b",
        "messages": [{"role": "user", "content": "2+2?"}],
    }


async def test_an_openai_worker_gets_the_temperature_only_when_given(clock: FakeClock) -> None:
    _, _, sent = await ask(Worker(openai_spec("w1")), completion("4"), clock, temperature=0.0)

    assert sent.json()["temperature"] == 0.0
    assert sent.json()["model"] == "m"


async def test_an_openai_worker_usage_is_recorded(clock: FakeClock) -> None:
    answer = completion("4", prompt_tokens=9, completion_tokens=1)

    _, lease, _ = await ask(Worker(openai_spec("w1")), answer, clock)

    assert (lease.record.input_tokens, lease.record.output_tokens) == (9, 1)
    assert lease.record.tokens_estimated is False


async def test_without_usage_an_openai_worker_answer_has_its_tokens_estimated(
    clock: FakeClock,
) -> None:
    answer = FakeResponse(json={"choices": [{"message": {"content": "four"}}]})

    _, lease, _ = await ask(Worker(openai_spec("w1")), answer, clock, prompt="2+2?")

    record = lease.record
    assert (record.input_tokens, record.output_tokens) == (
        estimate_tokens("2+2?"),
        estimate_tokens("four"),
    )
    assert record.tokens_estimated is True


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"choices": []}', b'{"object": "error"}'],
    ids=["not_json", "no_choices", "error_object"],
)
async def test_an_openai_worker_answer_that_is_no_chat_completion_is_a_retryable_failure(
    clock: FakeClock, body: bytes
) -> None:
    worker = Worker(openai_spec("w1"))

    with pytest.raises(UpstreamError) as raised:
        await ask(worker, FakeResponse(body=body), clock)

    assert raised.value.retryable is True
    assert raised.value.message == (
        f"worker {worker.id} did not return an OpenAI chat "
        "completion (no choices[0].message.content)"
    )


@pytest.mark.parametrize("prompt", [".", ".."])
def test_a_prompt_that_would_change_a_get_templates_path_is_the_callers_400(prompt: str) -> None:
    """Not sent at all, and not the worker's failure: no other worker is tried for it."""
    worker = template_worker(
        req_type="GET", req_url_template="http://t1/ask/{USER_PROMPT}/x?k=secret", body=None
    )
    with pytest.raises(BadRequest) as info:
        template_request(worker, prompt, None)
    error = info.value
    assert (error.status_code, error.model, error.worker) == (400, "t", worker.id)
    assert f"a whole path segment with {prompt!r}, which changes the path" in error.message
    assert "t1" not in error.message  # the worker is named by its id, never its URL
