"""Every model endpoint over real sockets, with the real openai SDK pointed at a real `balancer
serve`, in front of fake worker processes that answer in each API's own shape. Each model has a
worker that refuses everything with a 503 before its first byte, tried first in turn (round
robin): every call must still be answered, by the other worker."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import ResponseCompletedEvent

from balancer.fakes.processes import BalancerProcess, WorkerProcess
from tests.e2e.conftest import openai_sdk, register_openai, unique_model

AUDIO = b"RIFF" + bytes(range(256)) * 64


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, WorkerProcess]]:
    """A worker that refuses every request with a 503 at once, and one that serves."""
    tmp: Path = tmp_path_factory.mktemp("endpoints")
    refuser, good = WorkerProcess(tmp, "refuser"), WorkerProcess(tmp, "good", chunks=4)
    try:
        for worker in (refuser, good):
            worker.start()
        refuser.control(fail_rate=1.0, fail_status=503, fail_fast=True)
        yield refuser, good
    finally:
        for worker in (refuser, good):
            worker.stop()


@pytest.fixture
def sdk(balancer: BalancerProcess) -> Iterator[openai.OpenAI]:
    with openai_sdk(balancer) as client:
        yield client


def picture_text(b64: str | None) -> str:
    assert b64 is not None
    return base64.b64decode(b64)[8:].decode()


def responses_plain(sdk: openai.OpenAI, model: str) -> str:
    return sdk.responses.create(model=model, input="hello").output_text


def responses_streamed(sdk: openai.OpenAI, model: str) -> str:
    events = list(sdk.responses.create(model=model, input="hello", stream=True))
    last = events[-1]
    assert isinstance(last, ResponseCompletedEvent)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == last.response.output_text
    return last.response.output_text


def image(sdk: openai.OpenAI, model: str) -> str:
    made = sdk.images.generate(model=model, prompt="hello")
    assert made.data
    return picture_text(made.data[0].b64_json)


def transcription(sdk: openai.OpenAI, model: str) -> str:
    text = sdk.audio.transcriptions.create(model=model, file=("hello.wav", AUDIO, "audio/wav"))
    return text.text


def speech(sdk: openai.OpenAI, model: str) -> str:
    with sdk.audio.speech.with_streaming_response.create(
        model=model, input="hello", voice="alloy"
    ) as reply:
        audio = b"".join(reply.iter_bytes())
    assert audio.startswith(b"ID3")
    return audio[3:].decode()[: len("[good] hello")]


def rerank(sdk: openai.OpenAI, model: str) -> str:
    # The SDK has no rerank method: its generic call, as clients of vLLM's rerank use it.
    body = {"model": model, "query": "hello", "documents": ["goodbye", "hello"]}
    answer: Any = sdk.post("/rerank", cast_to=object, body=body)
    assert [r["index"] for r in answer["results"]] == [1, 0]
    return f"[good] {answer['results'][0]['document']['text']}"


CALLS: dict[str, Callable[[openai.OpenAI, str], str]] = {
    "responses": responses_plain,
    "responses-stream": responses_streamed,
    "images": image,
    "transcriptions": transcription,
    "speech": speech,
    "rerank": rerank,
}
EXPECTED = {
    "transcriptions": f"[good] heard {len(AUDIO)} bytes of hello.wav",
}


@pytest.mark.parametrize("call", CALLS, ids=str)
def test_every_endpoint_fails_over_past_a_worker_that_refuses_before_its_first_byte(
    client: httpx.Client,
    sdk: openai.OpenAI,
    pair: tuple[WorkerProcess, WorkerProcess],
    call: str,
) -> None:
    refuser, good = pair
    model = unique_model(call)
    for worker in (refuser, good):
        register_openai(client, model, worker.url, strategy="round_robin")
    refused_before = sum(refuser.served().values())
    for _ in range(3):
        assert CALLS[call](sdk, model) == EXPECTED.get(call, "[good] hello")
    assert sum(refuser.served().values()) > refused_before  # it was tried, and passed over


def test_models_retrieve_answers_a_registered_model(
    client: httpx.Client, sdk: openai.OpenAI, pair: tuple[WorkerProcess, WorkerProcess]
) -> None:
    model = unique_model("org/model")
    register_openai(client, model, pair[1].url)
    assert sdk.models.retrieve(model).id == model


def test_previous_response_id_reaches_the_worker_that_made_the_response(
    client: httpx.Client, sdk: openai.OpenAI, workers: list[WorkerProcess]
) -> None:
    model = unique_model("chat")
    for worker in workers:
        register_openai(client, model, worker.url, strategy="round_robin")
    before = {w.name: w.served().get("/v1/responses", 0) for w in workers}
    first = sdk.responses.create(model=model, input="remember this")
    maker = first.output_text.split("]")[0][1:]
    for turn in range(3):
        follow = sdk.responses.create(
            model=model, input=f"turn {turn}", previous_response_id=first.id
        )
        assert follow.output_text == f"[{maker}] turn {turn} (after {first.id})"
    served = {w.name: w.served().get("/v1/responses", 0) - before[w.name] for w in workers}
    assert served[maker] == 4 and sum(served.values()) == 4


def test_an_endpoint_no_worker_declares_is_a_404_naming_model_and_endpoint(
    client: httpx.Client, sdk: openai.OpenAI, pair: tuple[WorkerProcess, WorkerProcess]
) -> None:
    model = unique_model("chat-only")
    register_openai(client, model, pair[1].url, endpoints=["/v1/chat/completions"])
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.images.generate(model=model, prompt="a fox")
    assert raised.value.code == "endpoint_not_served"
    assert model in raised.value.message and "/v1/images/generations" in raised.value.message
    chat = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content == "[good] hi"


def test_a_response_made_before_a_restart_is_continued_on_the_worker_that_holds_it(
    tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """The restarted balancer does not know the response: it asks the workers in turn."""
    balancer = BalancerProcess(tmp_path)
    balancer.start()
    try:
        with balancer.client() as client:
            for worker in workers:
                register_openai(client, "kept", worker.url, strategy="round_robin")
        # (Clients closed before a stop: a kept-alive connection would hold up the shutdown.)
        with openai_sdk(balancer) as sdk:
            made = [sdk.responses.create(model="kept", input=str(i)) for i in range(3)]
        balancer.stop()
        balancer.start()  # the same store: the workers are back, the responses' owners not
        with openai_sdk(balancer) as sdk:
            for first in made:
                maker = first.output_text.split("]")[0] + "]"
                for turn in range(2):
                    follow = sdk.responses.create(
                        model="kept", input=f"turn {turn}", previous_response_id=first.id
                    )
                    assert follow.output_text == f"{maker} turn {turn} (after {first.id})"
        with balancer.client() as client:
            health = client.get("/api/server/health").json()["data"]["kept"]["workers"]
        assert all(w["status"] != "ejected" for w in health)
    finally:
        balancer.stop()


def test_a_response_stream_broken_by_its_worker_ends_with_an_error_the_sdk_raises(
    client: httpx.Client, sdk: openai.OpenAI, fresh_worker: WorkerProcess
) -> None:
    model = unique_model("broken")
    register_openai(client, model, fresh_worker.url)
    fresh_worker.control(break_after=3, chunks=8)
    seen = []
    with pytest.raises(openai.APIError, match="broke off the stream"):
        for event in sdk.responses.create(model=model, input="a long answer", stream=True):
            seen.append(event.type)
    assert seen.count("response.output_text.delta") == 3
