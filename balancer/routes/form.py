"""Reading a multipart/form-data upload (audio to transcribe, an image to edit): the few text
fields the balancer needs (`model`, `stream`), found in the body already read (so never more
than BALANCER_MAX_BODY_BYTES), and the body passed on as it came, with only the model renamed.

python-multipart parses it in one pass with callbacks, as starlette's form parser does, but
nothing is copied or spooled: the upload's file parts are skipped, and the fields asked for are
found with their place in the body, so that a rename changes those bytes and no other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from balancer.errors import BadRequest

FORM_CONTENT_TYPE = b"multipart/form-data"


@dataclass(slots=True)
class FormField:
    value: bytes
    span: tuple[int, int] | None
    """Where the value is in the body, when it lies there in one piece."""


@dataclass(slots=True)
class Form:
    body: bytes
    fields: dict[str, FormField] = field(default_factory=dict)

    def text(self, name: str) -> str | None:
        found = self.fields.get(name)
        if found is None:
            return None
        try:
            return found.value.decode()
        except UnicodeDecodeError:
            raise BadRequest(f"the form field {name} is not UTF-8 text") from None

    def with_value(self, name: str, value: str) -> bytes:
        """The body with field `name` set to `value` (it must be in the form)."""
        found = self.fields[name]
        if found.span is None:
            raise BadRequest(f"the form field {name} could not be rewritten for the worker")
        start, end = found.span
        return self.body[:start] + value.encode() + self.body[end:]


def is_form(content_type: str | None) -> bool:
    kind, _ = parse_options_header(content_type)
    return kind == FORM_CONTENT_TYPE


def read_form(body: bytes, content_type: str | None, names: tuple[str, ...]) -> Form:
    """The fields `names` (those that are there) of a multipart/form-data body."""
    kind, options = parse_options_header(content_type)
    if kind != FORM_CONTENT_TYPE:
        raise BadRequest(
            f"this endpoint takes a multipart/form-data upload, not {content_type or 'no body'}"
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("the multipart/form-data Content-Type has no boundary")
    form = Form(body)
    wanted = {name.encode(): name for name in names}
    state = _PartState()

    def on_part_begin() -> None:
        state.reset()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header_name += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.header_value += data[start:end]

    def on_header_end() -> None:
        if state.header_name.lower() == b"content-disposition":
            _, params = parse_options_header(state.header_value)
            state.name = wanted.get(params.get(b"name", b""))
            state.is_file = b"filename" in params
        state.header_name = state.header_value = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state.name is None or state.is_file:
            return
        if len(state.value) + end - start > MAX_FIELD_BYTES:
            raise BadRequest(f"the form field {state.name} is longer than {MAX_FIELD_BYTES} bytes")
        # Data from the parser's own look-behind buffer is not at a place in the body.
        in_body = data is body and (state.span is None or state.span[1] == start)
        state.contiguous = state.contiguous and in_body
        state.span = (state.span[0] if state.span else start, end)
        state.value += data[start:end]

    def on_part_end() -> None:
        if state.name is not None and not state.is_file and state.name not in form.fields:
            span = state.span if state.contiguous else None
            if not state.value:
                span = None
            form.fields[state.name] = FormField(state.value, span)

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(f"the multipart/form-data body is not valid: {exc}") from None
    return form


MAX_FIELD_BYTES = 4096
"""Longest text field read (a model name, a flag): the fields that matter are short."""


@dataclass(slots=True)
class _PartState:
    header_name: bytes = b""
    header_value: bytes = b""
    name: str | None = None
    is_file: bool = False
    value: bytes = b""
    span: tuple[int, int] | None = None
    contiguous: bool = True

    def reset(self) -> None:
        self.header_name = self.header_value = self.value = b""
        self.name = None
        self.is_file = False
        self.span = None
        self.contiguous = True
