"""Reading the text fields of a multipart/form-data upload, and renaming its model, without
touching the upload."""

from __future__ import annotations

import pytest

from balancer.errors import BadRequest
from balancer.routes.form import MAX_FIELD_BYTES, is_form, read_form

CONTENT_TYPE = "multipart/form-data; boundary=XyZ"


def form(*parts: tuple[str, bytes, str | None]) -> bytes:
    """A multipart body of (name, value, filename) parts, as clients write them."""
    body = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--XyZ\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename:
            body += b"Content-Type: application/octet-stream\r\n"
        body += b"\r\n" + value + b"\r\n"
    return body + b"--XyZ--\r\n"


AUDIO = b"RIFF\r\n--XyY almost the boundary\r\n--X\x00\xff" * 100
BODY = form(("file", AUDIO, "talk.wav"), ("model", b"whisper", None), ("stream", b"true", None))


def test_the_text_fields_are_found_and_the_upload_skipped() -> None:
    found = read_form(BODY, CONTENT_TYPE, ("model", "stream", "language"))
    assert found.text("model") == "whisper"
    assert found.text("stream") == "true"
    assert found.text("language") is None
    assert "file" not in found.fields


def test_renaming_the_model_changes_those_bytes_and_no_other() -> None:
    renamed = read_form(BODY, CONTENT_TYPE, ("model",)).with_value("model", "openai/whisper-v3")
    assert renamed == form(
        ("file", AUDIO, "talk.wav"),
        ("model", b"openai/whisper-v3", None),
        ("stream", b"true", None),
    )


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("application/json", b"{}", "multipart/form-data"),
        ("multipart/form-data", BODY, "no boundary"),
        (CONTENT_TYPE, b"--XyZ\r\nno headers end", "not valid"),
        (CONTENT_TYPE, form(("model", b"m" * (MAX_FIELD_BYTES + 1), None)), "longer than"),
        (CONTENT_TYPE, form(("model", b"\xff\xfe", None)), "not UTF-8"),
    ],
)
def test_a_bad_form_is_a_400_that_says_why(content_type: str, body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        read_form(body, content_type, ("model",)).text("model")


def test_is_form_reads_the_media_type_only() -> None:
    assert is_form(CONTENT_TYPE)
    assert not is_form("application/json")
    assert not is_form(None)


def test_a_value_that_looks_like_the_start_of_a_boundary_is_read_and_renamed_whole() -> None:
    body = form(("model", b"a\r\n--Xb", None))
    found = read_form(body, CONTENT_TYPE, ("model",))
    assert found.text("model") == "a\r\n--Xb"
    assert found.with_value("model", "z") == form(("model", b"z", None))
