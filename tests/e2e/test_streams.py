"""Streams and replies as servers other than ours write them, through `balancer serve` and a fake
worker made to write like them: JSON spaced as Python's json.dumps spaces it (FastChat), `data:`
without its space, events ended with \\r\\n\\r\\n (sse-starlette), `"usage": null` on every chunk
(vLLM), events cut across reads. Whatever the shape, the client gets its answer at once and clean,
the balancer measures it, and every reply names the model the client asked for."""

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from balancer.fakes.processes import BalancerProcess, WorkerProcess
from balancer.forwarding.openai_format import estimate_tokens
from tests.e2e.conftest import metric, openai_registration, openai_sdk, unique_model

PLAIN: dict[str, Any] = {
    "spaced_json": False,
    "sse_no_space": False,
    "crlf": False,
    "usage_null": False,
    "omit_usage": False,
    "chunk_split": 0,
    "stall_after": -1,
    "chunks": 8,
}
"""The fake worker's own way of writing, which each test changes as it needs."""

SHAPES: dict[str, dict[str, Any]] = {
    "spaced_json": {"spaced_json": True},
    "data_without_space": {"sse_no_space": True},
    "crlf": {"crlf": True},
    "usage_null": {"usage_null": True},
    "all_of_them_cut_across_reads": {
        "spaced_json": True,
        "sse_no_space": True,
        "crlf": True,
        "usage_null": True,
        "chunk_split": 25,
    },
}


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One fake worker for the module; each test sets how it writes."""
    started = WorkerProcess(tmp_path_factory.mktemp("streams"), "shaped")
    started.start()
    try:
        yield started
    finally:
        started.stop()


def writing(worker: WorkerProcess, **options: Any) -> WorkerProcess:
    worker.control(**{**PLAIN, **options})
    return worker


def register(client: httpx.Client, worker: WorkerProcess, **fields: Any) -> str:
    """A model of this test's own, served by `worker`."""
    model = fields.pop("model", None) or unique_model()
    reply = client.post("/api/server/register", json=openai_registration(model, worker, **fields))
    assert reply.status_code == 200, reply.text
    return model


def user(content: str) -> list[Any]:
    return [{"role": "user", "content": content}]


def metric_reaches(
    client: httpx.Client, name: str, expected: float, within: float = 5.0, **labels: str
) -> float:
    """The metric once it is `expected` (a request is counted just after its last byte), or
    what it is after `within` seconds."""
    deadline = time.monotonic() + within
    while (value := metric(client, name, **labels)) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES)
def test_a_stream_in_any_shape_reaches_the_sdk_clean_and_is_measured(
    client: httpx.Client, balancer: BalancerProcess, worker: WorkerProcess, shape: dict[str, Any]
) -> None:
    """The usage chunk asked for on the client's behalf is taken out (the README's loop would
    raise IndexError on it) and counted; the first token is seen."""
    model = register(client, writing(worker, **shape))

    stream = openai_sdk(balancer).chat.completions.create(
        model=model, messages=user("count these words"), stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)

    assert text == "[shaped] count these words"
    # The fake worker counts words: 3 in the prompt, 4 in the answer.
    tokens = "balancer_output_tokens_total"
    assert metric_reaches(client, tokens, 4, model=model, estimated="false") == 4
    assert metric(client, "balancer_input_tokens_total", model=model, estimated="false") == 3
    assert metric(client, tokens, model=model, estimated="true") == 0
    assert metric(client, "balancer_time_to_first_token_seconds_count", model=model) == 1


def test_a_stream_is_never_held_back_more_than_one_unfinished_event(
    client: httpx.Client, balancer: BalancerProcess, worker: WorkerProcess
) -> None:
    """Reads that end inside an event ("usage": null on every chunk), then a worker that stops
    sending: every whole event before the pause has reached the client."""
    model = register(client, writing(worker, usage_null=True, chunk_split=20, stall_after=2))
    body = {"model": model, "stream": True, "messages": user("nothing held back")}

    # Read timeout: the test's failure, not a wait (the worker never sends the rest).
    timeout = httpx.Timeout(10, read=5)
    with httpx.stream(
        "POST", f"{balancer.url}/v1/chat/completions", json=body, timeout=timeout
    ) as reply:
        assert reply.status_code == 200
        first = next(line for line in reply.iter_lines() if line.startswith("data:"))

    [choice] = orjson.loads(first.removeprefix("data:"))["choices"]
    assert choice["delta"]["role"] == "assistant"  # the first event, whole
    assert choice["delta"]["content"] and "[shaped] nothing".startswith(choice["delta"]["content"])


def test_a_reply_without_usage_is_counted_as_estimated(
    client: httpx.Client, worker: WorkerProcess
) -> None:
    model = register(client, writing(worker, omit_usage=True))

    reply = client.post(
        "/v1/chat/completions", json={"model": model, "messages": user("twelve chars")}
    )

    assert reply.status_code == 200
    assert "usage" not in reply.json()
    output, prompt = estimate_tokens("[shaped] twelve chars"), estimate_tokens("twelve chars")
    tokens = "balancer_output_tokens_total"
    assert metric_reaches(client, tokens, output, model=model, estimated="true") == output
    assert metric(client, "balancer_input_tokens_total", model=model, estimated="true") == prompt
    assert metric(client, tokens, model=model, estimated="false") == 0


@pytest.mark.parametrize("spaced_json", [False, True], ids=["compact", "spaced_json"])
def test_replies_name_the_model_the_client_asked_for(
    client: httpx.Client, balancer: BalancerProcess, worker: WorkerProcess, spaced_json: bool
) -> None:
    """The worker is asked for `fake-model` and answers with that name: the client, which
    asked for its own, gets its own back, in bodies and in every chunk of a stream."""
    model = register(client, writing(worker, spaced_json=spaced_json), upstream_model="fake-model")
    openai_client = openai_sdk(balancer)

    completion = openai_client.chat.completions.create(model=model, messages=user("hi"))
    chunks = list(
        openai_client.chat.completions.create(model=model, messages=user("hi"), stream=True)
    )
    text = openai_client.completions.create(model=model, prompt="hi")

    assert completion.choices[0].message.content == "[shaped] hi"
    assert completion.model == model
    assert len(chunks) > 2
    assert {chunk.model for chunk in chunks} == {model}
    assert text.model == model


def test_models_retrieve_answers_a_registered_model_and_404_for_others(
    client: httpx.Client, balancer: BalancerProcess, worker: WorkerProcess
) -> None:
    model = register(client, worker, model=unique_model("org/model"))  # ids hold slashes
    openai_client = openai_sdk(balancer)

    retrieved = openai_client.models.retrieve(model)

    assert (retrieved.id, retrieved.object, retrieved.owned_by) == (model, "model", "llm-balancer")
    with pytest.raises(openai.NotFoundError) as info:
        openai_client.models.retrieve(unique_model("never-registered"))
    assert info.value.code == "model_not_found"
