"""The OpenAI-compatible API, driven by the real openai SDK."""

import time

import httpx
import openai
import pytest

from balancer.fakes.processes import BalancerProcess, WorkerProcess
from tests.e2e.conftest import openai_registration, template_registration, unique_model


@pytest.fixture
def sdk(balancer: BalancerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{balancer.url}/v1", api_key="unused", max_retries=0)


def test_models_lists_every_registered_model(
    client: httpx.Client, sdk: openai.OpenAI, workers: list[WorkerProcess]
) -> None:
    a, b = unique_model(), unique_model()
    client.post("/api/server/register", json=openai_registration(a, workers[0]))
    client.post("/api/server/register", json=template_registration(b, workers[1]))
    ids = {m.id for m in sdk.models.list()}
    assert {a, b} <= ids


def test_chat_through_an_openai_worker_renames_the_model(
    client: httpx.Client, sdk: openai.OpenAI, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    client.post(
        "/api/server/register",
        json=openai_registration(model, workers[0], upstream_model="upstream-name"),
    )
    completion = sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello sdk"}]
    )
    assert completion.choices[0].message.content == "[w1] hello sdk"
    assert completion.model == "upstream-name"


def test_streamed_chat_arrives_chunk_by_chunk(
    client: httpx.Client, sdk: openai.OpenAI, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    client.post("/api/server/register", json=openai_registration(model, workers[0]))
    stream = sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "stream this please"}], stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 2
    assert "".join(pieces) == "[w1] stream this please"


def test_template_workers_answer_chat_plain_and_streamed(
    client: httpx.Client, sdk: openai.OpenAI, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    client.post("/api/server/register", json=template_registration(model, workers[1]))
    messages = [{"role": "user", "content": "from the sdk"}]
    plain = sdk.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
    assert plain.choices[0].message.content == "[w2] from the sdk"
    assert plain.usage is not None and plain.usage.completion_tokens > 0
    streamed = sdk.chat.completions.create(model=model, messages=messages, stream=True)  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == (
        "[w2] from the sdk"
    )


def test_a_conversation_is_rendered_into_the_template_prompt(
    client: httpx.Client, sdk: openai.OpenAI, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    client.post("/api/server/register", json=template_registration(model, workers[1]))
    completion = sdk.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    )
    assert completion.choices[0].message.content == "[w2] system: be brief\nuser: hi"


def test_completions_and_embeddings(
    client: httpx.Client, sdk: openai.OpenAI, workers: list[WorkerProcess]
) -> None:
    model, template_model = unique_model(), unique_model()
    client.post("/api/server/register", json=openai_registration(model, workers[2]))
    client.post("/api/server/register", json=template_registration(template_model, workers[2]))
    assert sdk.completions.create(model=model, prompt="once").choices[0].text == "[w3] once"
    assert sdk.completions.create(model=template_model, prompt="twice").choices[0].text == (
        "[w3] twice"
    )
    vectors = sdk.embeddings.create(model=model, input=["a", "b"])
    assert [len(v.embedding) for v in vectors.data] == [8, 8]
    with pytest.raises(openai.BadRequestError, match="no OpenAI-compatible worker"):
        sdk.embeddings.create(model=template_model, input="a")


def test_unknown_model_is_404_model_not_found(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"
    assert info.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_an_upstream_400_reaches_the_client_unchanged(
    client: httpx.Client, workers: list[WorkerProcess]
) -> None:
    model = unique_model()
    client.post("/api/server/register", json=openai_registration(model, workers[0]))
    reply = client.post("/v1/chat/completions", json={"model": model, "messages": []})
    assert reply.status_code == 400
    assert reply.json() == {
        "error": {"message": "messages is required", "type": "invalid_request_error"}
    }
    assert workers[0].served().get("/v1/chat/completions")  # it did reach the worker


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b'{"messages": []}', b'{"model": 3}', b'{"model": "m", "stream": "yes"}'],
)
def test_bad_openai_requests_get_openai_shaped_4xx(client: httpx.Client, body: bytes) -> None:
    reply = client.post("/v1/chat/completions", content=body)
    assert reply.status_code == 400
    assert set(reply.json()["error"]) >= {"message", "type", "code"}


def test_a_stream_broken_by_the_worker_ends_with_an_error_the_sdk_raises(
    client: httpx.Client, balancer: BalancerProcess, fresh_worker: WorkerProcess
) -> None:
    model = unique_model()
    client.post("/api/server/register", json=openai_registration(model, fresh_worker))
    fresh_worker.control(break_after=3, chunks=8)
    sdk = openai.OpenAI(base_url=f"{balancer.url}/v1", api_key="x", max_retries=0)
    stream = sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "a long answer"}], stream=True
    )
    with pytest.raises(openai.APIError, match="broke off the stream"):
        for _ in stream:
            pass


def test_a_stream_whose_worker_stalls_is_cut_by_the_idle_timeout(
    client: httpx.Client, fresh_worker: WorkerProcess
) -> None:
    model = unique_model()
    client.post("/api/server/register", json=openai_registration(model, fresh_worker, timeout=0.5))
    fresh_worker.control(stall_after=2, chunks=8)
    reply = client.post(
        "/v1/chat/completions",
        json={"model": model, "stream": True, "messages": [{"role": "user", "content": "stall"}]},
    )
    assert reply.status_code == 200
    assert "[DONE]" not in reply.text
    assert "timed out" in reply.text.splitlines()[-2]


def test_an_oversized_body_is_refused_before_it_is_read(balancer: BalancerProcess) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", balancer.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: 67108864\r\n\r\n{"
        )
        reply = b""
        while b"}}" not in reply:  # the head and the JSON body may arrive apart
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413")
    assert b"payload_too_large" in reply


def test_a_client_leaving_mid_stream_frees_the_workers_slot(
    client: httpx.Client, balancer: BalancerProcess, fresh_worker: WorkerProcess
) -> None:
    model = unique_model()
    client.post("/api/server/register", json=openai_registration(model, fresh_worker))
    fresh_worker.control(chunks=50, chunk_delay=0.1)
    with httpx.stream(
        "POST",
        f"{balancer.url}/v1/chat/completions",
        timeout=10,
        json={
            "model": model,
            "stream": True,
            "messages": [{"role": "user", "content": "a long story " * 20}],
        },
    ) as reply:
        chunks = reply.iter_bytes()
        next(chunks)  # the first chunk; leaving the block then hangs up
        [row] = client.get("/api/server/workers", params={"model_name": model}).json()["data"]
        assert row["inflight"] == 1
    deadline = time.monotonic() + 5
    while True:
        [row] = client.get("/api/server/workers", params={"model_name": model}).json()["data"]
        if row["inflight"] == 0:
            break
        assert time.monotonic() < deadline, "the slot was never given back"
        time.sleep(0.1)
