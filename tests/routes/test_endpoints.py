"""Every model endpoint beside chat (the Responses API, images, audio, rerank and score, and the
/v1/ pass-through), driven by the real openai SDK where it has a method, in-process: balanced by
`model`, failed over, metered, and refused clearly when no worker serves the endpoint."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
)

from balancer.forwarding.affinity import ResponseOwners
from tests.inprocess import InProcess

pytestmark = pytest.mark.anyio

AUDIO = b"RIFF" + bytes(range(256)) * 8


def picture_text(b64: str | None) -> str:
    assert b64 is not None
    return base64.b64decode(b64)[8:].decode()


async def streamed(
    sdk: openai.AsyncOpenAI, **request: Any
) -> tuple[list[ResponseStreamEvent], Response]:
    """A streamed response's events, and the response its last event completes."""
    events = [event async for event in await sdk.responses.create(stream=True, **request)]
    last = events[-1]
    assert isinstance(last, ResponseCompletedEvent)
    return events, last.response


# The Responses API


async def test_a_response_is_served_and_its_usage_metered(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    wid = await lb.register_openai("m", lb.worker("w1"), upstream_model="fake-model")
    response = await sdk.responses.create(model="m", input="hello there")
    assert response.output_text == "[w1] hello there"
    assert response.model == "m"  # the client's name, not the worker's
    labels = {"model": "m", "worker": wid, "estimated": "false"}
    assert lb.sample("balancer_input_tokens_total", **labels) == 2
    assert lb.sample("balancer_output_tokens_total", **labels) == 3
    assert (
        lb.sample(
            "balancer_requests_total",
            model="m",
            worker=wid,
            api="openai",
            endpoint="/v1/responses",
            code="200",
        )
        == 1
    )


async def test_a_streamed_response_comes_as_typed_events_with_ttft_and_usage(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    wid = await lb.register_openai("m", lb.worker("w1", chunks=4))
    events, _ = await streamed(sdk, model="m", input="stream it")
    assert events[0].type == "response.created"
    deltas = [e.delta for e in events if isinstance(e, ResponseTextDeltaEvent)]
    assert len(deltas) == 4 and "".join(deltas) == "[w1] stream it"
    assert lb.sample("balancer_time_to_first_token_seconds_count", model="m", worker=wid) == 1
    labels = {"model": "m", "worker": wid, "estimated": "false"}
    assert lb.sample("balancer_output_tokens_total", **labels) == 3


async def test_a_response_stream_broken_after_its_start_ends_with_an_error_the_sdk_raises(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    await lb.register_openai("m", lb.worker("w1", chunks=8, break_after=3))
    stream = await sdk.responses.create(model="m", input="a long answer", stream=True)
    seen = []
    with pytest.raises(openai.APIError, match="broke off the stream"):
        async for event in stream:
            seen.append(event.type)
    assert "response.output_text.delta" in seen


async def test_a_response_whose_first_worker_refuses_is_served_by_the_next(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    await lb.register_openai(
        "m", lb.worker("down", fail_rate=1.0, fail_status=503), strategy="round_robin"
    )
    await lb.register_openai("m", lb.worker("up"))
    for stream in (False, True, False, True):
        if stream:
            _, completed = await streamed(sdk, model="m", input="x")
            assert completed.output_text == "[up] x"
        else:
            response = await sdk.responses.create(model="m", input="x")
            assert response.output_text == "[up] x"


async def test_previous_response_id_goes_to_the_worker_that_made_the_response(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    for name in ("w1", "w2", "w3"):
        await lb.register_openai("m", lb.worker(name), strategy="round_robin")
    for stream in (False, True):
        if stream:
            _, first = await streamed(sdk, model="m", input="a")
        else:
            first = await sdk.responses.create(model="m", input="a")
        maker = first.output_text.split("]")[0] + "]"
        for turn in range(4):  # round robin would have moved on to the others
            follow = await sdk.responses.create(
                model="m", input=f"turn {turn}", previous_response_id=first.id
            )
            assert follow.output_text == f"{maker} turn {turn} (after {first.id})"


async def test_a_response_whose_worker_is_ejected_is_a_clear_503_not_another_workers_answer(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    await lb.register_openai("m", lb.worker("w1"), strategy="round_robin")
    await lb.register_openai("m", lb.worker("w2"))
    first = await sdk.responses.create(model="m", input="a")
    owner = lb.parts.responses.owner(first.id)
    maker = next(w for w in lb.parts.registry.workers_of("m") or [] if w.id == owner)
    maker.health.status = "ejected"
    with pytest.raises(openai.InternalServerError) as raised:
        await sdk.responses.create(model="m", input="b", previous_response_id=first.id)
    assert raised.value.status_code == 503
    assert first.id in raised.value.message and "ejected" in raised.value.message


async def test_a_response_made_before_a_restart_is_found_on_the_worker_that_holds_it(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    for name in ("w1", "w2", "w3", "w4"):
        await lb.register_openai("m", lb.worker(name), strategy="round_robin")
    made = [await sdk.responses.create(model="m", input=str(i)) for i in range(4)]
    lb.parts.responses = ResponseOwners()  # what a restart (or another process) knows
    for first in made:
        maker = first.output_text.split("]")[0] + "]"
        follow = await sdk.responses.create(model="m", input="on", previous_response_id=first.id)
        assert follow.output_text == f"{maker} on (after {first.id})"
    for worker in lb.parts.registry.workers_of("m") or []:
        assert worker.health.consecutive_failures == 0  # "not here" is no failure
    assert len(lb.parts.responses) == 8  # the four found, and the four new ones


async def test_a_response_the_balancer_never_saw_gets_the_workers_own_404(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    await lb.register_openai("m", lb.worker("w1"))
    with pytest.raises(openai.NotFoundError, match="resp_elsewhere"):
        await sdk.responses.create(model="m", input="b", previous_response_id="resp_elsewhere")
    [worker] = lb.parts.registry.workers_of("m") or []
    assert worker.status != "ejected" and worker.health.consecutive_failures == 0


async def test_a_stored_response_is_read_and_deleted_at_the_worker_that_holds_it(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    for name in ("w1", "w2", "w3"):
        await lb.register_openai("m", lb.worker(name), strategy="round_robin")
    made = await sdk.responses.create(model="m", input="keep me")
    for _ in range(3):
        again = await sdk.responses.retrieve(made.id)
        assert again.id == made.id and again.output_text == made.output_text
    items = await sdk.responses.input_items.list(made.id)
    assert [item.model_dump()["content"][0]["text"] for item in items.data] == ["keep me"]
    await sdk.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError, match="does not know which worker"):
        await sdk.responses.retrieve(made.id)


async def test_a_background_response_is_cancelled_at_the_worker_that_holds_it(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    for name in ("w1", "w2", "w3"):
        await lb.register_openai("m", lb.worker(name), strategy="round_robin")
    queued = await sdk.responses.create(model="m", input="take your time", background=True)
    assert queued.status == "queued"
    for _ in range(3):  # round robin would have moved on; cancelling again answers the same
        cancelled = await sdk.responses.cancel(queued.id)
        assert (cancelled.id, cancelled.status, cancelled.model) == (queued.id, "cancelled", "m")
    assert (await sdk.responses.retrieve(queued.id)).status == "cancelled"

    # One left to run is done when polled, and then past cancelling.
    other = await sdk.responses.create(model="m", input="go on", background=True)
    done = await sdk.responses.retrieve(other.id)
    assert done.status == "completed" and done.output_text.endswith("] go on")
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a completed response"):
        await sdk.responses.cancel(other.id)
    # Only a background response can be cancelled: the worker's own 400, relayed.
    made = await sdk.responses.create(model="m", input="now")
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a synchronous response"):
        await sdk.responses.cancel(made.id)
    for worker in lb.parts.registry.workers_of("m") or []:
        assert worker.health.consecutive_failures == 0  # the caller's mistake, not theirs

    with pytest.raises(openai.NotFoundError, match="does not know which worker"):
        await sdk.responses.cancel("resp_elsewhere")
    reply = await lb.client.post(f"/v1/responses/{made.id}/undo")
    assert reply.status_code == 404
    assert reply.json()["error"]["message"].startswith(f"no route /v1/responses/{made.id}/undo")


# Images, audio, rerank, score


async def test_images_are_generated_and_edited_from_an_upload(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    wid = await lb.register_openai("img", lb.worker("w1"), upstream_model="sd-xl")
    made = await sdk.images.generate(model="img", prompt="a red fox")
    assert made.data and picture_text(made.data[0].b64_json) == "[w1] a red fox"
    labels = {"model": "img", "worker": wid, "estimated": "false"}
    assert lb.sample("balancer_input_tokens_total", **labels) == 3
    edited = await sdk.images.edit(
        model="img", prompt="bluer", image=("fox.png", b"\x89PNG fox", "image/png")
    )
    assert edited.data and picture_text(edited.data[0].b64_json) == (
        "[w1] bluer edited fox.png (8 bytes)"
    )
    sent = [r for r in lb.fleet.requests if r.url.endswith("/images/edits")]
    assert b'name="model"\r\n\r\nsd-xl\r\n' in (sent[-1].body or b"")


async def test_audio_is_transcribed_and_translated_from_an_upload(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    await lb.register_openai("whisper", lb.worker("w1"))
    text = await sdk.audio.transcriptions.create(
        model="whisper", file=("talk.wav", AUDIO, "audio/wav")
    )
    assert text.text == f"[w1] heard {len(AUDIO)} bytes of talk.wav"
    # (The SDK marks translations deprecated; servers still serve them.)
    english = await lb.client.post(
        "/v1/audio/translations", data={"model": "whisper"}, files={"file": ("talk.wav", AUDIO)}
    )
    assert english.json()["text"] == text.text
    plain = await sdk.audio.transcriptions.create(
        model="whisper", file=("talk.wav", AUDIO), response_format="text"
    )
    assert plain.strip() == text.text


async def test_a_streamed_transcription_is_metered_from_its_typed_events(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    wid = await lb.register_openai("whisper", lb.worker("w1", chunks=3))
    stream = await sdk.audio.transcriptions.create(
        model="whisper", file=("talk.wav", AUDIO), stream=True
    )
    events = [event async for event in stream]
    assert [e.type for e in events] == ["transcript.text.delta"] * 3 + ["transcript.text.done"]
    assert lb.sample("balancer_time_to_first_token_seconds_count", model="whisper", worker=wid)
    labels = {"model": "whisper", "worker": wid, "estimated": "false"}
    assert lb.sample("balancer_input_tokens_total", **labels) == len(AUDIO) // 100
    assert lb.sample("balancer_output_tokens_total", **labels) == 5


async def test_speech_is_relayed_as_a_binary_stream(lb: InProcess, sdk: openai.AsyncOpenAI) -> None:
    await lb.register_openai("tts", lb.worker("w1", chunks=5))
    reply = await lb.client.post("/v1/audio/speech", json={"model": "tts", "input": "hi"})
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "audio/mpeg"
    assert reply.content == b"ID3" + b"[w1] hi" * 64
    speech = await sdk.audio.speech.create(model="tts", input="hi", voice="alloy")
    assert speech.content == reply.content


async def test_speech_broken_before_its_first_byte_fails_over(lb: InProcess) -> None:
    await lb.register_openai("tts", lb.worker("broken", break_after=0), strategy="round_robin")
    await lb.register_openai("tts", lb.worker("good"))
    for _ in range(4):
        reply = await lb.client.post("/v1/audio/speech", json={"model": "tts", "input": "x"})
        assert reply.status_code == 200 and reply.content.startswith(b"ID3[good] x")


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
async def test_documents_are_reranked(lb: InProcess, path: str) -> None:
    await lb.register_openai("ranker", lb.worker("w1"))
    reply = await lb.client.post(
        path,
        json={
            "model": "ranker",
            "query": "red fox",
            "documents": ["a blue whale", "the red fox jumps", "red fox"],
            "top_n": 2,
        },
    )
    assert reply.status_code == 200, reply.text
    assert [r["index"] for r in reply.json()["results"]] == [2, 1]
    [sent] = [r for r in lb.fleet.requests if "rerank" in r.url]
    assert sent.url == f"http://w1{path}"  # /v2/rerank beside the worker's /v1


async def test_text_pairs_are_scored(lb: InProcess) -> None:
    await lb.register_openai("scorer", lb.worker("w1"))
    reply = await lb.client.post(
        "/v1/score", json={"model": "scorer", "text_1": "red fox", "text_2": ["red fox", "cat"]}
    )
    assert reply.status_code == 200
    assert [d["score"] for d in reply.json()["data"]] == [1.0, 0.0]


# The pass-through, and what is refused


async def test_another_v1_endpoint_naming_a_model_is_relayed_and_labelled_other(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    wid = await lb.register_openai("guard", lb.worker("w1"))
    moderation = await sdk.moderations.create(model="guard", input="hello")
    assert moderation.results[0].flagged is False
    assert moderation.model == "guard"
    labels = {"model": "guard", "worker": wid, "api": "openai", "code": "200"}
    assert lb.sample("balancer_requests_total", **labels, endpoint="other") == 1


async def test_a_path_the_worker_does_not_have_is_its_own_404_and_no_failure_of_it(
    lb: InProcess,
) -> None:
    await lb.register_openai("m", lb.worker("w1"))
    for _ in range(6):  # more than it takes to eject a failing worker
        reply = await lb.client.post("/v1/typo", json={"model": "m"})
        assert reply.status_code == 404
        assert reply.json()["error"]["message"] == "no route POST /v1/typo"  # the worker's
    [worker] = lb.parts.registry.workers_of("m") or []
    assert worker.status != "ejected" and worker.health.consecutive_failures == 0


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b'{"input": "no model"}', b'{"model": ""}', b"[1]"],
)
async def test_an_unknown_path_without_a_model_is_an_openai_404(lb: InProcess, body: bytes) -> None:
    reply = await lb.client.post(
        "/v1/nothing/here", content=body, headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "not_found"
    assert "no route /v1/nothing/here" in reply.json()["error"]["message"]


@pytest.mark.parametrize(
    "path",
    ["/v1/a/%2E%2E/%2E%2E/admin", "/v1/%2E/x", "/v1/a//b", "/v1/a%20b", "/v1/.hidden"],
)
async def test_a_path_that_would_reach_beyond_v1_on_the_worker_is_not_passed_on(
    lb: InProcess, path: str
) -> None:
    await lb.register_openai("m", lb.worker("w1"))
    reply = await lb.client.post(httpx.URL(f"http://127.0.0.1{path}"), json={"model": "m"})
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "not_found"
    assert [r for r in lb.fleet.requests if "/health" not in r.url] == []


async def test_a_stored_response_path_cannot_reach_elsewhere_on_its_worker(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    await lb.register_openai("m", lb.worker("w1"))
    made = await sdk.responses.create(model="m", input="x")
    reply = await lb.client.get(httpx.URL(f"http://127.0.0.1/v1/responses/{made.id}%2F..%2Fx"))
    assert reply.status_code == 404
    assert not [r for r in lb.fleet.requests if r.method == "GET" and "responses" in r.url]


async def test_an_unknown_path_naming_an_unknown_model_is_model_not_found(lb: InProcess) -> None:
    reply = await lb.client.post("/v1/nothing", json={"model": "nope"})
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "model_not_found"


async def test_a_get_of_an_unknown_v1_path_is_an_openai_404(lb: InProcess) -> None:
    reply = await lb.client.get("/v1/nothing")
    assert reply.status_code == 404
    assert reply.json()["error"]["message"] == "no route /v1/nothing"


async def test_a_chat_model_is_never_sent_an_image_request(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    await lb.register_openai("mix", lb.worker("chat"), endpoints=["/v1/chat/completions"])
    await lb.register_openai("mix", lb.worker("draw"), endpoints=["/v1/images/generations"])
    for _ in range(4):
        made = await sdk.images.generate(model="mix", prompt="p")
        assert made.data and picture_text(made.data[0].b64_json) == "[draw] p"
        chat = await sdk.chat.completions.create(
            model="mix", messages=[{"role": "user", "content": "c"}]
        )
        assert chat.choices[0].message.content == "[chat] c"


async def test_an_endpoint_no_worker_serves_is_a_404_naming_model_and_endpoint(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    await lb.register_openai("chatty", lb.worker("w1"), endpoints=["/v1/chat/completions"])
    with pytest.raises(openai.NotFoundError) as raised:
        await sdk.audio.transcriptions.create(model="chatty", file=("a.wav", AUDIO))
    assert raised.value.code == "endpoint_not_served"
    assert "chatty" in raised.value.message
    assert "/v1/audio/transcriptions" in raised.value.message
    assert all("/audio/" not in r.url for r in lb.fleet.requests)


async def test_an_operategpt_prompt_goes_only_to_workers_that_chat(lb: InProcess) -> None:
    await lb.register_openai("mix", lb.worker("draw"), endpoints=["/v1/images/generations"])
    body = {"input": "hi", "model_name": "mix"}
    reply = await lb.client.post("/api/v1/chat/completions", json=body)
    assert reply.status_code == 404
    assert "/api/v1/chat/completions" in reply.json()["msg"] and "mix" in reply.json()["msg"]
    await lb.register_openai("mix", lb.worker("chat"), endpoints=["/v1/chat/completions"])
    for _ in range(3):
        reply = await lb.client.post("/api/v1/chat/completions", json=body)
        assert reply.json()["result"] == "[chat] hi"


@pytest.mark.parametrize("endpoints", [[], ["chat"], ["/v1/chat completions"], "/v1/x"])
async def test_a_registration_with_bad_endpoints_is_a_400(lb: InProcess, endpoints: object) -> None:
    reply = await lb.client.post(
        "/api/server/register",
        json={
            "model_name": "m",
            "api": "openai",
            "req_url_template": "http://w1/v1",
            "endpoints": endpoints,
        },
    )
    assert reply.status_code == 400
    assert "endpoints" in reply.json()["msg"]


async def test_the_declared_endpoints_are_listed_with_the_worker(lb: InProcess) -> None:
    await lb.register_openai("m", lb.worker("w1"), endpoints=["/v1/responses"])
    [row] = (await lb.client.get("/api/server/workers")).json()["data"]
    assert row["endpoints"] == ["/v1/responses"]


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        ({"Content-Type": "application/json"}, b"{}", "multipart/form-data"),
        ({"Content-Type": "multipart/form-data"}, b"x", "no boundary"),
        ({"Content-Type": "multipart/form-data; boundary=b"}, b"--b\r\nbad", "model is required"),
    ],
)
async def test_a_bad_upload_is_a_400(
    lb: InProcess, headers: dict[str, str], body: bytes, message: str
) -> None:
    await lb.register_openai("whisper", lb.worker("w1"))
    reply = await lb.client.post("/v1/audio/transcriptions", content=body, headers=headers)
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"]["message"]


async def test_an_upload_over_the_body_limit_is_a_413(lb: InProcess) -> None:
    await lb.register_openai("whisper", lb.worker("w1"))
    limit = lb.parts.settings.max_body_bytes
    files = {"file": ("big.wav", b"\0" * (limit + 1))}
    reply = await lb.client.post("/v1/audio/transcriptions", data={"model": "whisper"}, files=files)
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "payload_too_large"


async def test_models_retrieve_names_the_model(sdk: openai.AsyncOpenAI, lb: InProcess) -> None:
    await lb.register_openai("org/model-7b", lb.worker("w1"))
    model = await sdk.models.retrieve("org/model-7b")
    assert model.id == "org/model-7b"


# Template workers for any model type


SD_WEBUI = {
    "model_name": "sd-webui",
    "req_url_template": "http://sd/sdapi/v1/txt2img",
    "body": {"prompt": "{USER_PROMPT}", "steps": 20, "width": 512, "height": 512},
    "response_extract": "images[0]",
    "timeout": 120,
}
"""The README's Stable Diffusion WebUI registration, pointed at a fake server of its shape."""


async def test_an_image_api_without_openai_joins_as_a_template_worker(
    lb: InProcess, sdk: openai.AsyncOpenAI
) -> None:
    lb.worker("sd")
    await lb.register(**SD_WEBUI)
    reply = await lb.client.post(
        "/api/v1/chat/completions", json={"input": "a red fox", "model_name": "sd-webui"}
    )
    assert reply.status_code == 200, reply.text
    assert picture_text(reply.json()["result"]) == "[sd] a red fox"
    [sent] = [r for r in lb.fleet.requests if r.url.endswith("/txt2img")]
    assert sent.json() == {"prompt": "a red fox", "steps": 20, "width": 512, "height": 512}
    chat = await sdk.chat.completions.create(
        model="sd-webui", messages=[{"role": "user", "content": "a blue fox"}]
    )
    assert picture_text(chat.choices[0].message.content) == "[sd] a blue fox"
