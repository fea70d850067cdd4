"""One request to one worker: transport failures become errors naming the worker, statuses are
judged retryable or the worker's own word, Retry-After is read."""

from __future__ import annotations

import contextlib
import email.utils
import time

import pytest

from balancer.errors import UpstreamError, UpstreamTimeout
from balancer.fakes.transport import FakeResponse
from balancer.forwarding.prompt import complete_text
from balancer.forwarding.transport import TransportError
from balancer.forwarding.upstream import (
    UpstreamReply,
    openai_url,
    parse_retry_after,
    send,
    upstream_headers,
)
from balancer.registry import Worker, parse_spec
from tests.conftest import FakeClock
from tests.forwarding.helpers import (
    CONNECT_REFUSED,
    RESET,
    TIMED_OUT,
    Answer,
    SilentStream,
    by_host,
    lease_on,
    openai_spec,
    status,
)

pytestmark = pytest.mark.anyio

URL = "http://w1/v1/chat/completions"


def worker() -> Worker:
    return Worker(openai_spec("w1", model="m", timeout=7.5))


async def reply_from(answer: Answer, *, for_worker: Worker | None = None) -> UpstreamReply:
    return await send(
        by_host({"w1": answer}), for_worker or worker(), "POST", URL, body=b"{}", headers={}
    )


async def failure_of(answer: Answer) -> UpstreamError:
    """The error reading the worker's whole answer ends in."""
    with pytest.raises(UpstreamError) as raised:
        reply = await reply_from(answer)
        await reply.read()
    return raised.value


# Transport failures


@pytest.mark.parametrize(
    ("failure", "error_type", "status_code"),
    [
        (CONNECT_REFUSED, UpstreamError, 502),
        (TIMED_OUT, UpstreamTimeout, 504),
        (RESET, UpstreamError, 502),
    ],
    ids=["connect", "timeout", "reset"],
)
async def test_a_transport_failure_is_an_upstream_error_naming_the_worker_and_url(
    failure: TransportError, error_type: type[UpstreamError], status_code: int
) -> None:
    w1 = worker()

    with pytest.raises(UpstreamError) as raised:
        await reply_from(failure, for_worker=w1)

    error = raised.value
    assert type(error) is error_type
    assert error.status_code == status_code
    assert error.message == f"worker {w1.id}: {failure.message}"
    assert (error.model, error.worker) == ("m", w1.id)
    assert error.reason == failure.kind
    assert error.retryable is True


@pytest.mark.parametrize(
    "failure", [CONNECT_REFUSED, TIMED_OUT, RESET], ids=["connect", "timeout", "reset"]
)
async def test_a_failure_while_reading_the_body_is_judged_the_same_way(
    failure: TransportError,
) -> None:
    error = await failure_of(FakeResponse(error=failure))

    assert error.reason == failure.kind
    assert error.retryable is True
    assert isinstance(error, UpstreamTimeout) is (failure.kind == "timeout")
    assert error.message.endswith(f": {failure.message}")


async def test_reading_the_body_gives_the_connection_back_even_when_it_fails() -> None:
    answers = [FakeResponse(body=b"ok"), FakeResponse(error=RESET)]
    for answer in answers:
        reply = await reply_from(answer)
        with contextlib.suppress(UpstreamError):
            await reply.read()
    assert [answer.closed for answer in answers] == [True, True]


async def test_the_request_goes_to_the_transport_as_given() -> None:
    transport = by_host({"w1": FakeResponse(body=b"ok")})

    await send(transport, worker(), "POST", URL, body=b"{}", headers={"X-A": "1"})

    [sent] = transport.sent
    assert (sent.method, sent.url, sent.body, sent.headers) == ("POST", URL, b"{}", {"X-A": "1"})


async def test_a_stream_failing_before_its_first_chunk_is_retryable() -> None:
    reply = await reply_from(SilentStream(RESET))

    with pytest.raises(UpstreamError) as raised:
        await anext(reply.chunks())

    assert raised.value.retryable is True
    assert raised.value.reason == "reset"


async def test_a_stream_breaking_after_its_first_chunk_is_not_retryable() -> None:
    w1 = worker()
    reply = await reply_from(FakeResponse(chunks=[b"data: 1\n\n"], error=RESET), for_worker=w1)
    chunks = reply.chunks()

    assert await anext(chunks) == b"data: 1\n\n"
    with pytest.raises(UpstreamError) as raised:
        await anext(chunks)

    error = raised.value
    assert error.retryable is False
    assert error.reason == "reset"
    assert error.message == f"worker {w1.id} broke off the stream: {RESET.message}"


# Status classification


@pytest.mark.parametrize("code", [429, 401, 403, 404, 405, 408, 500, 501, 502, 503, 504, 505, 302])
async def test_429_and_what_the_worker_cannot_serve_are_retried_with_reason_http_status(
    code: int,
) -> None:
    w1 = worker()
    reply = await reply_from(status(code), for_worker=w1)

    error = reply.status_failure(await reply.read())

    assert error.retryable is True
    assert error.reason == f"http_{code}"
    assert error.upstream_status == code
    assert error.status_code in (502, 504)  # never the worker's: the client gets a 503 instead
    assert error.message == (
        f'worker {w1.id} answered HTTP {code}: {{"error":{{"message":"status {code}"}}}}'
    )


@pytest.mark.parametrize("code", [400, 409, 413, 418, 422])
async def test_the_callers_own_mistakes_are_not_retried_and_keep_their_status(code: int) -> None:
    reply = await reply_from(status(code))

    error = reply.status_failure(await reply.read())

    assert error.retryable is False
    assert error.reason == "http_4xx"
    assert error.upstream_status == code
    assert error.status_code == code


async def test_the_error_quotes_at_most_300_bytes_of_the_body() -> None:
    reply = await reply_from(FakeResponse(500, body=b"x" * 1000))

    error = reply.status_failure(await reply.read())

    assert error.message.endswith(": " + "x" * 300)


async def test_an_empty_error_body_is_not_quoted() -> None:
    w1 = worker()
    reply = await reply_from(FakeResponse(503), for_worker=w1)

    error = reply.status_failure(await reply.read())

    assert error.message == f"worker {w1.id} answered HTTP 503"


async def test_retry_after_is_read_from_a_429() -> None:
    reply = await reply_from(status(429, headers={"Retry-After": "12"}))

    assert reply.status_failure(b"").retry_after == 12.0


async def test_retry_after_is_read_from_a_503_too() -> None:
    """RFC 9110: a 503 with Retry-After says how long the server expects to be unavailable."""
    reply = await reply_from(status(503, headers={"Retry-After": "12"}))

    assert reply.status_failure(b"").retry_after == 12.0


# Retry-After


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5", 5.0), ("0.5", 0.5), (" 7 ", 7.0), ("3600", 3600.0)],
)
def test_retry_after_in_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_as_an_http_date_is_the_seconds_until_then() -> None:
    in_two_minutes = email.utils.formatdate(time.time() + 120, usegmt=True)

    seconds = parse_retry_after(in_two_minutes)

    assert seconds is not None
    assert 115 <= seconds <= 120  # the date has whole seconds, and the test takes some time


def test_retry_after_as_a_far_http_date_is_taken_as_it_is() -> None:
    assert (parse_retry_after("Wed, 21 Oct 2099 07:28:00 GMT") or 0) > 365 * 86400


@pytest.mark.parametrize(
    "value",
    [None, "", "soon", "12 seconds", "0", "-3", "Wed, 21 Oct 2015 07:28:00 GMT"],
    ids=["missing", "empty", "word", "unit", "zero", "negative", "past_date"],
)
def test_retry_after_that_says_nothing_usable_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "1e999"])
def test_retry_after_that_is_not_a_finite_non_negative_number_is_none(value: str) -> None:
    assert parse_retry_after(value) is None


# What errors show of a template worker's URL


TEMPLATE = "http://t1/ask?q={USER_PROMPT}"
PROMPT = "my secret plan"


def template_worker() -> Worker:
    return Worker(
        parse_spec(
            {
                "model_name": "t",
                "req_type": "GET",
                "req_url_template": TEMPLATE,
                "response_extract": "answer",
            }
        )
    )


@pytest.mark.parametrize(
    "answer",
    [
        CONNECT_REFUSED,
        TIMED_OUT,
        status(500),
        status(400),
        FakeResponse(error=RESET),
        FakeResponse(body=b"<html>not json</html>"),
        FakeResponse(json={"other": 1}),
    ],
    ids=["connect", "timeout", "5xx", "4xx", "read_failure", "not_json", "no_value_at_path"],
)
async def test_a_template_worker_error_names_the_worker_never_its_url_or_the_prompt(
    clock: FakeClock, answer: Answer
) -> None:
    t1 = template_worker()
    transport = by_host({"t1": answer})

    with pytest.raises(UpstreamError) as raised:
        await complete_text(transport, lease_on(t1, clock=clock), PROMPT, None)

    [sent] = transport.sent
    assert sent.url == "http://t1/ask?q=my%20secret%20plan"
    assert f"worker {t1.id}" in raised.value.message
    assert "secret" not in raised.value.message
    assert "http://t1" not in raised.value.message  # errors reach clients: no URL in them


# Small parts


@pytest.mark.parametrize("base", ["http://w1/v1", "http://w1/v1/"])
def test_an_openai_path_goes_under_the_base_url(base: str) -> None:
    w = Worker(parse_spec({"model_name": "m", "api": "openai", "req_url_template": base}))

    assert openai_url(w, "/chat/completions") == URL


def test_upstream_headers_carry_the_worker_headers_and_the_request_id() -> None:
    w = Worker(openai_spec("w1", header={"Authorization": "Bearer k", "X-Request-ID": "fixed"}))

    assert upstream_headers(w, "req-9", "application/json") == {
        "Content-Type": "application/json",
        "Authorization": "Bearer k",
        "X-Request-ID": "req-9",
    }
    assert upstream_headers(w, None, None) == {"Authorization": "Bearer k", "X-Request-ID": "fixed"}


async def test_an_error_body_never_repeats_the_workers_own_key() -> None:
    """Some servers echo the key they got ("Received API Key = sk-...")."""
    w = Worker(openai_spec("w1", header={"Authorization": "Bearer sk-very-secret-key"}))
    body = b'{"error": "Incorrect API key. Received API Key = sk-very-secret-key"}'
    reply = await reply_from(FakeResponse(401, body=body), for_worker=w)

    error = reply.status_failure(await reply.read())

    assert "sk-very-secret-key" not in error.message
    assert "Received API Key = ***" in error.message


@pytest.mark.parametrize("code", [600, 999, 199])
async def test_a_status_no_http_server_sends_is_a_broken_answer_tried_elsewhere(code: int) -> None:
    reply = await reply_from(FakeResponse(code, body=b"?"))

    error = reply.status_failure(await reply.read())

    assert error.retryable is True
    assert error.reason == "invalid_response"
