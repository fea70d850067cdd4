"""Relaying an OpenAI worker's answer as it is: bodies byte for byte, streams chunk by chunk, with
failover only before the client's first byte and the worker's usage written to the record."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
import pytest

from balancer.events import AttemptFailed, AttemptSucceeded, Events, RequestRecord
from balancer.fakes.transport import FakeResponse
from balancer.forwarding import sse
from balancer.forwarding.forwarder import Forwarder, Served
from balancer.forwarding.lease import Lease
from balancer.forwarding.relay import Relayed, StreamTap, relay_openai
from balancer.registry import WorkerRegistry
from balancer.selection import Selector
from tests.conftest import FakeClock
from tests.forwarding.helpers import (
    CONNECT_REFUSED,
    RESET,
    TIMED_OUT,
    Answer,
    Heard,
    SilentStream,
    add_workers,
    by_host,
    content_chunk,
    data_events,
    new_record,
    role_chunk,
    status,
    streamed,
    usage_chunk,
)

pytestmark = pytest.mark.anyio

CHAT = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


async def relay_from(
    registry: WorkerRegistry,
    clock: FakeClock,
    events: Events,
    answers: Mapping[str, Answer],
    *,
    stream: bool = False,
    strip_usage: bool = False,
    record: RequestRecord | None = None,
) -> Served[Relayed]:
    """/v1/chat/completions on the workers `answers` names, tried in that order."""
    await add_workers(registry, *answers)
    transport = by_host(answers)
    forwarder = Forwarder(
        registry, Selector("round_robin", clock=clock), events=events, clock=clock
    )

    async def attempt(lease: Lease) -> Relayed:
        return await relay_openai(
            transport, lease, "/chat/completions", CHAT, stream=stream, strip_usage=strip_usage
        )

    return await forwarder.run(record or new_record(), "m", attempt)


async def read_all(relayed: Relayed) -> bytes:
    assert relayed.stream is not None
    return b"".join([chunk async for chunk in relayed.stream])


# Whole bodies


async def test_a_body_is_passed_through_byte_for_byte(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    body = (
        b'{ "id": "c-1",\n  "choices": [{"message": {"content": "caf\\u00e9 \xe2\x98\x95"}}],\n'
        b'  "usage": {"prompt_tokens": 7, "completion_tokens": 2}, "score": 1.50 }'
    )
    answers = {"w1": FakeResponse(body=body, headers={"Content-Type": "application/json"})}

    served = await relay_from(registry, clock, events, answers)

    assert served.value.status == 200
    assert served.value.content_type == "application/json"
    assert served.value.body == body
    assert served.value.stream is None


async def test_the_request_is_sent_as_the_client_wrote_it_to_the_worker_path(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    [w1] = await add_workers(registry, "w1", header={"Authorization": "Bearer k"})
    transport = by_host({"w1": FakeResponse(json={"choices": []})})
    lease = Lease(w1, new_record(), clock=clock, events=events)

    await relay_openai(transport, lease, "/chat/completions", CHAT, stream=False)

    [sent] = transport.sent
    assert (sent.method, sent.url, sent.body) == ("POST", "http://w1/v1/chat/completions", CHAT)
    assert sent.headers == {
        "Content-Type": "application/json",
        "Authorization": "Bearer k",
        "X-Request-ID": "req-1",
    }


async def test_the_usage_of_a_body_is_recorded(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    record = new_record()

    await relay_from(
        registry, clock, events, {"w1": FakeResponse(json={"usage": usage})}, record=record
    )

    assert (record.input_tokens, record.output_tokens) == (7, 2)
    assert record.tokens_estimated is False


async def test_a_body_without_usage_gets_estimated_tokens(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    """Four characters a token: "hi" asked, "Hello there, friend" (19) answered."""
    answer = {"choices": [{"index": 0, "message": {"content": "Hello there, friend"}}]}
    record = new_record()

    await relay_from(registry, clock, events, {"w1": FakeResponse(json=answer)}, record=record)

    assert (record.input_tokens, record.output_tokens) == (1, 5)
    assert record.tokens_estimated is True


async def test_a_client_error_is_relayed_with_its_status_and_not_retried(
    registry: WorkerRegistry, clock: FakeClock, events: Events, heard: Heard
) -> None:
    answers = {"w1": status(400), "w2": status(200)}

    served = await relay_from(registry, clock, events, answers)

    assert served.value.status == 400
    assert served.value.body == b'{"error":{"message":"status 400"}}'
    assert served.attempts == 1
    assert [e.worker.id for e in heard.of(AttemptSucceeded)] == [served.worker.id]
    assert heard.of(AttemptFailed) == []


# Streams: failover before the first chunk, an error event after it


async def test_a_streamed_request_answered_with_a_5xx_fails_over(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    answers = {"w1": status(503), "w2": streamed(content_chunk("from w2"), sse.DONE)}

    served = await relay_from(registry, clock, events, answers, stream=True)

    assert await read_all(served.value) == content_chunk("from w2") + sse.DONE
    assert served.attempts == 2


@pytest.mark.parametrize(
    "failure",
    [CONNECT_REFUSED, TIMED_OUT, SilentStream(RESET), SilentStream(TIMED_OUT), SilentStream()],
    ids=["connect", "timeout", "broken_before_first_byte", "stalled_first_byte", "ended_empty"],
)
async def test_a_stream_that_fails_before_its_first_chunk_fails_over(
    registry: WorkerRegistry, clock: FakeClock, events: Events, failure: Answer
) -> None:
    second = streamed(role_chunk(), content_chunk("from w2"), sse.DONE)

    served = await relay_from(registry, clock, events, {"w1": failure, "w2": second}, stream=True)

    assert await read_all(served.value) == role_chunk() + content_chunk("from w2") + sse.DONE
    assert served.attempts == 2


async def test_a_stream_broken_before_any_chunk_fails_over(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    answers = {"w1": streamed(error=RESET), "w2": streamed(content_chunk("from w2"), sse.DONE)}

    served = await relay_from(registry, clock, events, answers, stream=True)

    assert await read_all(served.value) == content_chunk("from w2") + sse.DONE


async def test_a_stream_that_breaks_after_its_first_chunk_ends_with_an_error_event(
    registry: WorkerRegistry, clock: FakeClock, events: Events, heard: Heard
) -> None:
    broken = streamed(role_chunk(), content_chunk("Hel"), error=RESET)
    answers = {"w1": broken, "w2": streamed(content_chunk("from w2"), sse.DONE)}

    served = await relay_from(registry, clock, events, answers, stream=True)
    received = await read_all(served.value)

    assert served.attempts == 1  # too late to fail over: the client has the first chunk
    assert received.startswith(role_chunk() + content_chunk("Hel"))
    *_, last = data_events(received)
    error = orjson.loads(last)["error"]
    assert error["type"] == "server_error"
    assert error["code"] == "upstream_error"
    assert f"worker {served.worker.id} broke off the stream" in error["message"]
    assert "broke off the stream" in error["message"]
    assert b"[DONE]" not in received
    [failed] = heard.of(AttemptFailed)
    assert failed.worker is served.worker
    assert failed.error.reason == "reset"
    # The first chunk counted as the worker's answer; the break is reported on top.
    assert [e.worker for e in heard.of(AttemptSucceeded)] == [served.worker]


async def test_a_whole_stream_is_relayed_chunk_for_chunk(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    chunks = (role_chunk(), content_chunk("Hel"), content_chunk("lo"), sse.DONE)

    served = await relay_from(registry, clock, events, {"w1": streamed(*chunks)}, stream=True)

    assert served.value.status == 200
    assert served.value.content_type == sse.CONTENT_TYPE
    assert served.value.stream is not None
    assert [chunk async for chunk in served.value.stream] == list(chunks)


# What a stream writes to the record


async def test_the_usage_chunk_asked_for_is_taken_out_and_its_tokens_recorded(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    chunks = (content_chunk("Hi"), usage_chunk(11, 4), sse.DONE)
    record = new_record()

    served = await relay_from(
        registry,
        clock,
        events,
        {"w1": streamed(*chunks)},
        stream=True,
        strip_usage=True,
        record=record,
    )

    assert await read_all(served.value) == content_chunk("Hi") + sse.DONE
    assert (record.input_tokens, record.output_tokens) == (11, 4)
    assert record.tokens_estimated is False


async def test_the_usage_chunk_the_client_asked_for_is_kept(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    chunks = (content_chunk("Hi"), usage_chunk(11, 4), sse.DONE)
    record = new_record()

    served = await relay_from(
        registry, clock, events, {"w1": streamed(*chunks)}, stream=True, record=record
    )

    assert await read_all(served.value) == b"".join(chunks)
    assert (record.input_tokens, record.output_tokens) == (11, 4)


async def test_without_usage_the_output_tokens_are_estimated_from_content_chunks(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    chunks = (role_chunk(), content_chunk("Hel"), content_chunk("lo"), sse.DONE)
    record = new_record()

    served = await relay_from(
        registry, clock, events, {"w1": streamed(*chunks)}, stream=True, record=record
    )
    await read_all(served.value)

    assert (record.input_tokens, record.output_tokens) == (1, 2)  # the prompt "hi": estimated
    assert record.tokens_estimated is True


async def test_ttft_is_recorded_at_the_first_content_chunk(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    record = new_record()
    chunks = (role_chunk(), content_chunk("Hi"), sse.DONE)

    served = await relay_from(
        registry, clock, events, {"w1": streamed(*chunks)}, stream=True, record=record
    )
    stream = served.value.stream
    assert stream is not None

    assert await anext(stream) == role_chunk()
    assert record.first_byte_at is not None
    assert record.ttft is None  # the role chunk carries no token
    assert await anext(stream) == content_chunk("Hi")
    assert record.ttft is not None
    assert 0 <= record.ttft <= time.perf_counter() - record.started
    await read_all(served.value)


# StreamTap, chunk by chunk


def test_the_usage_only_chunk_is_taken_out_when_the_client_did_not_ask() -> None:
    tap = StreamTap(strip_usage=True)

    assert tap.feed(content_chunk("Hi")) == content_chunk("Hi")
    assert tap.feed(usage_chunk(3, 5)) == b""
    assert tap.feed(sse.DONE) == sse.DONE
    assert tap.usage == (3, 5)


def test_the_usage_only_chunk_is_kept_when_the_client_asked() -> None:
    tap = StreamTap(strip_usage=False)

    assert tap.feed(usage_chunk(3, 5)) == usage_chunk(3, 5)
    assert tap.usage == (3, 5)


def test_a_usage_chunk_that_also_has_choices_is_kept() -> None:
    chunk = sse.json_event(
        {"choices": [{"index": 0, "delta": {"content": "!"}}], "usage": {"prompt_tokens": 3}}
    )
    tap = StreamTap(strip_usage=True)

    assert tap.feed(chunk) == chunk
    assert tap.usage == (3, 0)


def test_only_the_usage_event_is_taken_out_of_a_chunk_with_several_events() -> None:
    tap = StreamTap(strip_usage=True)

    out = tap.feed(content_chunk("Hi") + usage_chunk(3, 5) + sse.DONE)

    assert out == content_chunk("Hi") + sse.DONE
    assert tap.usage == (3, 5)


@pytest.mark.parametrize("strip_usage", [True, False])
def test_a_usage_event_split_across_two_chunks_is_reassembled(strip_usage: bool) -> None:
    event = usage_chunk(3, 5)
    cut = event.index(b'"prompt_tokens"')
    tap = StreamTap(strip_usage=strip_usage)

    assert tap.feed(event[:cut]) == b""  # held until the event ends
    assert tap.feed(event[cut:]) == (b"" if strip_usage else event)
    assert tap.usage == (3, 5)


def test_an_unfinished_event_held_at_the_end_is_flushed_as_it_is() -> None:
    event = usage_chunk(3, 5)
    tap = StreamTap(strip_usage=True)

    assert tap.feed(event[:-2]) == b""
    assert tap.flush() == event[:-2]
    assert tap.flush() == b""


@pytest.mark.parametrize(
    ("chunk", "token"),
    [
        (content_chunk("x"), True),
        (sse.json_event({"choices": [{"text": "x"}]}), True),
        (role_chunk(), False),
        (usage_chunk(), False),
        (sse.DONE, False),
    ],
    ids=["chat_content", "completion_text", "empty_content", "usage", "done"],
)
def test_a_token_is_a_non_empty_content_or_text(chunk: bytes, token: bool) -> None:
    assert StreamTap.has_token(chunk) is token


def test_a_token_in_spaced_json_is_seen() -> None:
    assert StreamTap.has_token(b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n')


def test_a_usage_event_without_a_space_after_data_is_read() -> None:
    tap = StreamTap(strip_usage=True)

    out = tap.feed(usage_chunk(3, 5).replace(b"data: ", b"data:"))

    assert tap.usage == (3, 5)
    assert out == b""


def test_a_usage_event_cut_inside_its_key_is_reassembled() -> None:
    event = usage_chunk(3, 5)
    cut = event.index(b'"usage"') + 3
    tap = StreamTap(strip_usage=True)

    out = tap.feed(event[:cut]) + tap.feed(event[cut:])

    assert tap.usage == (3, 5)
    assert out == b""


def test_a_usage_event_in_a_crlf_framed_chunk_is_read() -> None:
    content = content_chunk("Hi").replace(b"\n\n", b"\r\n\r\n")
    usage = usage_chunk(3, 5).replace(b"\n\n", b"\r\n\r\n")
    tap = StreamTap(strip_usage=True)

    out = tap.feed(content + usage)

    assert tap.usage == (3, 5)
    assert out == content


# Streams as real servers write them: spaced JSON (Python's json.dumps), `data:` without its
# space, events ended with \r\n\r\n (sse-starlette) or \r\r, `"usage": null` on every chunk
# (vLLM once include_usage is set), events cut anywhere by the network.


@dataclass(frozen=True)
class Shape:
    """How a server writes its events."""

    spaced: bool = False
    space: bool = True
    end: bytes = b"\n\n"

    @property
    def prefix(self) -> bytes:
        return b"data: " if self.space else b"data:"

    def dumps(self, document: object) -> bytes:
        return json.dumps(document).encode() if self.spaced else orjson.dumps(document)

    def event(self, document: object) -> bytes:
        return self.prefix + self.dumps(document) + self.end

    def done(self) -> bytes:
        return self.prefix + b"[DONE]" + self.end

    def data_of(self, stream: bytes) -> list[bytes]:
        return [event.removeprefix(self.prefix) for event in stream.split(self.end) if event]


SHAPES = {
    "compact": Shape(),
    "spaced": Shape(spaced=True),
    "no_space": Shape(space=False),
    "crlf": Shape(end=b"\r\n\r\n"),
    "cr": Shape(end=b"\r\r"),
    "all_of_them": Shape(spaced=True, space=False, end=b"\r\n\r\n"),
}
USAGE = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def stream_of(shape: Shape, *, usage_null: bool = False) -> list[bytes]:
    """A whole stream's events: a role, two tokens, a finish, the usage-only event, [DONE]."""
    extra = {"usage": None} if usage_null else {}
    deltas: list[dict[str, str]] = [{"role": "assistant", "content": ""}, {"content": "Hel"}]
    deltas += [{"content": "lo"}, {}]
    chunks = [
        shape.event({"model": "up", "choices": [{"index": 0, "delta": d}], **extra}) for d in deltas
    ]
    return [*chunks, shape.event({"model": "up", "choices": [], "usage": USAGE}), shape.done()]


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES)
def test_the_usage_only_event_is_taken_out_and_counted_whatever_the_shape(shape: Shape) -> None:
    events = stream_of(shape)
    tap = StreamTap(strip_usage=True)

    out = [tap.feed(event) for event in events]

    assert out == [*events[:4], b"", events[5]]
    assert tap.usage == (3, 5)
    assert tap.content_chunks == 2


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES)
def test_a_token_is_seen_whatever_the_shape(shape: Shape) -> None:
    role, hel, *_ = stream_of(shape)

    assert not StreamTap.has_token(role)
    assert StreamTap.has_token(hel)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES)
def test_events_with_usage_null_pass_at_once_untouched(shape: Shape) -> None:
    *events, usage, _ = stream_of(shape, usage_null=True)
    tap = StreamTap(strip_usage=True)

    for event in events:
        assert tap.feed(event) is event  # not copied, not parsed
    assert tap.usage is None
    assert tap.feed(usage) == b""
    assert tap.usage == (3, 5)
    assert tap.content_chunks == 2


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES)
def test_never_more_than_one_unfinished_event_is_held_back(shape: Shape) -> None:
    """Whole events go on at once; only the unfinished last one waits for its end."""
    role, hel, lo, *_ = stream_of(shape, usage_null=True)
    tap = StreamTap(strip_usage=True)

    assert tap.feed(role + hel[:20]) == role
    assert tap.feed(hel[20:] + lo[:-1]) == hel
    assert tap.feed(lo[-1:]) == lo
    assert tap.content_chunks == 2


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES)
@pytest.mark.parametrize("strip_usage", [True, False], ids=["strip", "keep"])
def test_a_stream_cut_anywhere_comes_out_whole_and_counted(shape: Shape, strip_usage: bool) -> None:
    """Every place the network may cut the stream, two cuts at a time."""
    events = stream_of(shape, usage_null=True)
    whole = b"".join(events)
    expected = b"".join(e for e in events if e != events[4]) if strip_usage else whole
    for first in range(1, len(whole)):
        second = min(len(whole), first + 37)
        tap = StreamTap(strip_usage=strip_usage)
        out = tap.feed(whole[:first]) + tap.feed(whole[first:second]) + tap.feed(whole[second:])
        assert out + tap.flush() == expected, first
        assert (tap.usage, tap.content_chunks) == ((3, 5), 2), first


def test_usage_sent_with_every_chunk_is_kept_and_read_from_the_last() -> None:
    """vLLM's continuous usage stats: cumulative usage beside each token."""

    def chunk(text: str, completion_tokens: int) -> bytes:
        usage = {"prompt_tokens": 3, "completion_tokens": completion_tokens}
        return sse.json_event({"choices": [{"delta": {"content": text}}], "usage": usage})

    chunks = [chunk("Hel", 1), chunk("lo", 2), chunk("!", 3)]
    tap = StreamTap(strip_usage=True)

    assert [tap.feed(c) for c in chunks] == chunks
    assert tap.usage == (3, 3)


async def test_ttft_is_recorded_for_a_worker_that_writes_spaced_json(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    record = new_record()
    chunks = stream_of(SHAPES["all_of_them"])

    served = await relay_from(
        registry, clock, events, {"w1": streamed(*chunks)}, stream=True, record=record
    )
    await read_all(served.value)

    assert record.ttft is not None
    assert (record.input_tokens, record.output_tokens) == (3, 5)
    assert record.tokens_estimated is False


# The model the client asked for


async def relay_renamed(
    registry: WorkerRegistry, clock: FakeClock, events: Events, answer: Answer, *, stream: bool
) -> Relayed:
    """/v1/chat/completions for model "m", on a worker that serves it as "up"."""
    [w1] = await add_workers(registry, "w1", upstream_model="up")
    lease = Lease(w1, new_record(), clock=clock, events=events)
    transport = by_host({"w1": answer})
    return await relay_openai(transport, lease, "/chat/completions", CHAT, stream=stream, model="m")


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES)
async def test_every_stream_event_names_the_model_the_client_asked_for(
    registry: WorkerRegistry, clock: FakeClock, events: Events, shape: Shape
) -> None:
    chunks = stream_of(shape)

    relayed = await relay_renamed(registry, clock, events, streamed(*chunks), stream=True)
    received = await read_all(relayed)

    documents = [orjson.loads(d) for d in shape.data_of(received) if d != b"[DONE]"]
    assert len(documents) == 5
    assert {document["model"] for document in documents} == {"m"}
    # Only the name changed: written compact, whatever the worker's spacing.
    up = shape.dumps({"model": "up"})[1:-1]
    assert received == b"".join(chunks).replace(up, b'"model":"m"')


@pytest.mark.parametrize("spaced", [False, True], ids=["compact", "spaced"])
async def test_a_body_names_the_model_the_client_asked_for(
    registry: WorkerRegistry, clock: FakeClock, events: Events, spaced: bool
) -> None:
    answer = {"model": "up", "choices": [{"message": {"content": 'a "model": "up"'}}]}
    body = Shape(spaced=spaced).dumps(answer)

    relayed = await relay_renamed(registry, clock, events, FakeResponse(body=body), stream=False)

    assert relayed.body is not None
    assert orjson.loads(relayed.body) == {**answer, "model": "m"}  # the content is untouched


async def test_an_error_body_is_relayed_as_the_worker_wrote_it(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    body = b'{"error": {"message": "bad request for model", "model": "up"}}'

    relayed = await relay_renamed(
        registry, clock, events, FakeResponse(400, body=body), stream=False
    )

    assert relayed.body == body


async def test_with_the_same_name_a_stream_passes_untouched(
    registry: WorkerRegistry, clock: FakeClock, events: Events
) -> None:
    [w1] = await add_workers(registry, "w1")
    lease = Lease(w1, new_record(), clock=clock, events=events)
    chunks = stream_of(SHAPES["compact"])[:4]
    transport = by_host({"w1": streamed(*chunks)})

    relayed = await relay_openai(
        transport, lease, "/chat/completions", CHAT, stream=True, model="m"
    )

    assert await read_all(relayed) == b"".join(chunks)


def typed_event(kind: str, **fields: object) -> bytes:
    """One event of a Responses API stream, as servers write it: `event:` and `data:`."""
    return f"event: {kind}\n".encode() + sse.json_event({"type": kind, **fields})


def test_a_typed_stream_counts_text_deltas_and_reads_usage_from_response_completed() -> None:
    tap = StreamTap(strip_usage=False, events="typed")
    created = typed_event("response.created", response={"id": "r", "usage": None})
    part = typed_event("response.content_part.added", content_index=0, part={"text": ""})
    deltas = b"".join(typed_event("response.output_text.delta", delta=d) for d in ("a", "b"))
    done = typed_event("response.output_text.done", content_index=0, text="ab")
    completed = typed_event(
        "response.completed",
        response={"id": "r", "usage": {"input_tokens": 7, "output_tokens": 2, "total_tokens": 9}},
    )
    out = b"".join(tap.feed(chunk) for chunk in (created + part, deltas, done, completed))
    assert out == created + part + deltas + done + completed  # passed on untouched
    assert tap.content_chunks == 2
    assert tap.usage == (7, 2)


def test_a_typed_stream_that_breaks_ends_with_an_error_event_of_its_own_kind() -> None:
    event = sse.typed_error_event("worker w broke off the stream")
    assert event.startswith(b"event: error\n")
    document = orjson.loads(sse.event_data(event) or b"")
    assert document["type"] == "error" and document["code"] == "upstream_error"
    # The openai SDK raises a streamed event whose data holds an `error` object.
    assert document["error"]["message"] == "worker w broke off the stream"
