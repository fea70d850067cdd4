"""The one place an error becomes a reply: the headers an error asks for."""

from __future__ import annotations

import pytest

from balancer.errors import BadRequest, NoWorkerAvailable, PayloadTooLarge
from balancer.responses import error_reply


@pytest.mark.parametrize(("seconds", "header"), [(1.0, "1"), (0.2, "1"), (2.5, "3")])
def test_an_error_with_retry_after_says_it_in_whole_seconds(seconds: float, header: str) -> None:
    error = NoWorkerAvailable("model m: the line is full", model="m")
    error.retry_after = seconds
    reply = error_reply("openai", error)
    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == header


def test_an_error_without_retry_after_has_no_such_header() -> None:
    reply = error_reply("operategpt", NoWorkerAvailable("model m: every worker failed"))
    assert "Retry-After" not in reply.headers


def test_a_413_closes_the_connection_its_unread_body_came_on() -> None:
    reply = error_reply("openai", PayloadTooLarge("the request body is larger than 1 bytes"))
    assert reply.status_code == 413
    assert reply.headers["Connection"] == "close"
    assert "Connection" not in error_reply("openai", BadRequest("no model")).headers
