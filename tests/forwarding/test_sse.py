"""Reading server-sent events as the spec says: lines end with \n, \r\n or \r, a blank line ends
an event, and `data:` may or may not be followed by a space."""

from __future__ import annotations

import pytest

from balancer.forwarding import sse


@pytest.mark.parametrize(
    ("data", "whole"),
    [
        (b"data: a\n\n", 9),
        (b"data: a\r\n\r\n", 11),
        (b"data: a\r\r", 9),
        (b"data: a\n\r\n", 10),
        (b"data: a\n\ndata: b\n", 9),
        (b"data: a\r\n\r\ndata: b\r\n\r", 11),  # its last \n is still to come
        (b"data: a\r\n", 0),
        (b"data: a", 0),
        (b"", 0),
    ],
    ids=[
        "lf",
        "crlf",
        "cr",
        "lf_crlf",
        "one_and_a_line",
        "crlf_cut_in_its_end",
        "a_line",
        "no_end",
        "empty",
    ],
)
def test_whole_events_end_at_a_blank_line_whatever_the_line_ends(data: bytes, whole: int) -> None:
    assert sse.whole_events_length(data) == whole


def test_events_are_split_after_their_ends_and_join_back() -> None:
    data = b"data: a\r\n\r\n: ping\n\ndata:b\r\rdata: c"

    events = sse.split_events(data)

    assert events == [b"data: a\r\n\r\n", b": ping\n\n", b"data:b\r\r", b"data: c"]
    assert b"".join(events) == data


@pytest.mark.parametrize(
    ("event", "data"),
    [
        (b"data: {}\n\n", b"{}"),
        (b"data:{}\r\n\r\n", b"{}"),
        (b"data:  {}\n\n", b" {}"),  # only one space is the framing's
        (b"id: 1\r\ndata: a\r\ndata: b\r\n\r\n", b"a\nb"),
        (b"data\n\n", b""),
        (b": a comment\n\n", None),
        (b"database: x\n\n", None),
    ],
    ids=["space", "no_space", "two_spaces", "two_lines", "empty", "comment", "other_field"],
)
def test_an_events_data_is_read_as_a_client_reads_it(event: bytes, data: bytes | None) -> None:
    assert sse.event_data(event) == data
