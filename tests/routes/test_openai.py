"""The OpenAI-compatible API (/v1/...), driven by the real openai SDK, in-process."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest

from tests.inprocess import InProcess

pytestmark = pytest.mark.anyio


def user(content: str) -> list[Any]:
    return [{"role": "user", "content": content}]


def sse_content(text: str) -> str:
    """The assistant's text from a chat completion SSE stream."""
    parts = []
    for line in text.splitlines():
        if line.startswith("data: {"):
            for choice in orjson.loads(line[6:]).get("choices", []):
                parts.append(choice.get("delta", {}).get("content") or "")
    return "".join(parts)


async def test_models_lists_every_registered_model_with_its_owner(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    await lb.register_openai("a", lb.worker("w1"))
    await lb.register_template("b", lb.worker("w2"))
    models = {m.id: m.owned_by async for m in sdk.models.list()}
    assert models == {"a": "llm-balancer", "b": "operategpt"}


async def test_models_retrieve_answers_a_registered_model(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    await lb.register_openai("a", lb.worker("w1"))
    await lb.register_template("org/b-7B", lb.worker("w2"))  # model ids hold slashes
    a = await sdk.models.retrieve("a")
    b = await sdk.models.retrieve("org/b-7B")
    assert (a.id, a.object, a.owned_by) == ("a", "model", "llm-balancer")
    assert (b.id, b.owned_by) == ("org/b-7B", "operategpt")


async def test_models_retrieve_of_an_unknown_model_is_404_model_not_found(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    await lb.register_openai("a", lb.worker("w1"))
    with pytest.raises(openai.NotFoundError) as info:
        await sdk.models.retrieve("nope")
    assert info.value.code == "model_not_found"
    assert isinstance(info.value.body, dict)
    assert info.value.body["type"] == "invalid_request_error"


async def test_a_wrong_method_on_a_model_is_405(lb: InProcess) -> None:
    reply = await lb.client.post("/v1/models/a")
    assert reply.status_code == 405
    assert reply.headers["Allow"] == "GET"
    assert reply.json()["error"]["message"] == "method POST not allowed on /v1/models/a"


async def test_chat_through_an_openai_worker_renames_the_model_both_ways(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    """The worker is asked for its own name; the client is answered with the name it used."""
    await lb.register_openai("m", lb.worker("w1"), upstream_model="upstream-name")
    completion = await sdk.chat.completions.create(model="m", messages=user("hello sdk"))
    assert completion.choices[0].message.content == "[w1] hello sdk"
    assert completion.model == "m"
    stream = await sdk.chat.completions.create(model="m", messages=user("hi"), stream=True)
    assert {chunk.model async for chunk in stream} == {"m"}
    text = await sdk.completions.create(model="m", prompt="hi")
    assert text.model == "m"


@pytest.mark.parametrize("spaced_json", [False, True], ids=["compact", "spaced"])
async def test_the_model_a_fallback_answers_for_is_the_one_the_client_asked_for(
    lb: InProcess, sdk: openai.AsyncOpenAI, spaced_json: bool
) -> None:
    await lb.register_openai("main", lb.worker("down"), fallbacks=["spare"])
    await lb.register_openai("spare", lb.worker("w1", spaced_json=spaced_json))
    lb.fleet.stopped.add("down")
    completion = await sdk.chat.completions.create(model="main", messages=user("hi"))
    assert completion.choices[0].message.content == "[w1] hi"
    assert completion.model == "main"


async def test_a_streamed_chat_comes_as_the_workers_chunks(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    await lb.register_openai("m", lb.worker("w1", chunks=4))
    stream = await sdk.chat.completions.create(
        model="m", messages=user("stream this please"), stream=True
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert len(pieces) > 2
    assert "".join(pieces) == "[w1] stream this please"


async def test_the_usage_chunk_asked_for_on_the_clients_behalf_is_not_shown(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    await lb.register_openai("m", lb.worker("w1"))
    stream = await sdk.chat.completions.create(model="m", messages=user("hi"), stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)


async def test_a_client_that_asks_for_usage_still_gets_it(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    await lb.register_openai("m", lb.worker("w1"))
    stream = await sdk.chat.completions.create(
        model="m", messages=user("hi"), stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == 2  # "[w1] hi"


async def test_template_workers_answer_chat_plain_and_streamed(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    await lb.register_template("m", lb.worker("w2"))
    plain = await sdk.chat.completions.create(model="m", messages=user("from the sdk"))
    assert plain.choices[0].message.content == "[w2] from the sdk"
    assert plain.usage is not None
    assert plain.usage.completion_tokens > 0
    streamed = await sdk.chat.completions.create(
        model="m", messages=user("from the sdk"), stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in streamed if c.choices])
    assert text == "[w2] from the sdk"


async def test_a_conversation_is_rendered_into_the_template_prompt(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    await lb.register_template("m", lb.worker("w2"))
    completion = await sdk.chat.completions.create(
        model="m",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    )
    assert completion.choices[0].message.content == "[w2] system: be brief\nuser: hi"


async def test_completions_come_from_openai_and_template_workers(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    worker = lb.worker("w3")
    await lb.register_openai("openai-model", worker)
    await lb.register_template("template-model", worker)
    once = await sdk.completions.create(model="openai-model", prompt="once")
    twice = await sdk.completions.create(model="template-model", prompt="twice")
    assert once.choices[0].text == "[w3] once"
    assert twice.choices[0].text == "[w3] twice"


async def test_embeddings_need_an_openai_compatible_worker(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    worker = lb.worker("w3")
    await lb.register_openai("openai-model", worker)
    await lb.register_template("template-model", worker)
    vectors = await sdk.embeddings.create(model="openai-model", input=["a", "b"])
    assert [len(v.embedding) for v in vectors.data] == [8, 8]
    with pytest.raises(openai.BadRequestError, match="no OpenAI-compatible worker"):
        await sdk.embeddings.create(model="template-model", input="a")


async def test_an_unknown_model_is_404_model_not_found(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await sdk.chat.completions.create(model="nope", messages=user("x"))
    assert info.value.code == "model_not_found"
    assert isinstance(info.value.body, dict)
    assert info.value.body["type"] == "invalid_request_error"


async def test_an_upstream_400_reaches_the_client_unchanged(lb: InProcess) -> None:
    await lb.register_openai("m", lb.worker("w1"))
    reply = await lb.client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert reply.status_code == 400
    assert reply.json() == {
        "error": {"message": "messages is required", "type": "invalid_request_error"}
    }
    assert lb.fleet.workers["w1"].served["/v1/chat/completions"] == 1  # it did reach the worker


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b'{"messages": []}', b'{"model": 3}', b'{"model": "m", "stream": "yes"}'],
)
async def test_bad_requests_get_openai_shaped_400s(lb: InProcess, body: bytes) -> None:
    reply = await lb.client.post("/v1/chat/completions", content=body)
    assert reply.status_code == 400
    assert set(reply.json()["error"]) >= {"message", "type", "code"}


async def test_a_stream_broken_by_the_worker_ends_with_an_error_the_sdk_raises(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    await lb.register_openai("m", lb.worker("w1", chunks=8, break_after=3))
    stream = await sdk.chat.completions.create(
        model="m", messages=user("a long answer"), stream=True
    )
    with pytest.raises(openai.APIError, match="broke off the stream"):
        async for _ in stream:
            pass


async def test_a_stream_whose_first_worker_refuses_is_served_by_the_next(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    await lb.register_openai("m", lb.worker("dead"), strategy="round_robin")
    await lb.register_openai("m", lb.worker("w1"))
    lb.fleet.stopped.add("dead")
    for _ in range(4):  # round robin: the dead one comes first every other time
        stream = await sdk.chat.completions.create(model="m", messages=user("go"), stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "[w1] go"


async def test_a_stream_that_fails_before_its_first_byte_fails_over(lb: InProcess) -> None:
    # Headers, then the worker breaks off before any chunk.
    await lb.register_openai("m", lb.worker("broken", break_after=0), strategy="round_robin")
    await lb.register_openai("m", lb.worker("good"))
    for _ in range(4):
        reply = await lb.client.post(
            "/v1/chat/completions", json={"model": "m", "stream": True, "messages": user("s")}
        )
        assert reply.status_code == 200
        assert sse_content(reply.text) == "[good] s"
        assert reply.text.rstrip().endswith("data: [DONE]")


async def test_a_reply_without_usage_is_metered_as_estimated(lb: InProcess) -> None:
    """Four characters a token, labelled estimated="true"."""
    wid = await lb.register_openai("m", lb.worker("w1", omit_usage=True))
    reply = await lb.client.post(
        "/v1/chat/completions", json={"model": "m", "messages": user("twelve chars")}
    )
    assert reply.status_code == 200
    assert "usage" not in reply.json()
    labels = {"model": "m", "worker": wid}
    assert lb.sample("balancer_input_tokens_total", **labels, estimated="true") == 3
    assert (
        lb.sample("balancer_output_tokens_total", **labels, estimated="true") == 5
    )  # "[w1] twelve chars"
    assert lb.sample("balancer_output_tokens_total", **labels, estimated="false") is None


@pytest.mark.parametrize("text", [None, {}, 3, ["a"]])
async def test_a_text_part_whose_text_is_not_a_string_is_a_400_for_a_template_worker(
    lb: InProcess, text: object
) -> None:
    """Found by schemathesis (tests/e2e/test_fuzz.py): it was a 500."""
    await lb.register_template("m", lb.worker("w2"))
    content = [{"type": "text", "text": text}]
    reply = await lb.client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": content}]},
    )
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["message"] == "a text content part's text must be a string"


async def test_stream_null_is_taken_as_false_as_openai_does(lb: InProcess) -> None:
    await lb.register_openai("m", lb.worker("w1"))
    reply = await lb.client.post(
        "/v1/chat/completions",
        json={"model": "m", "stream": None, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["object"] == "chat.completion"
