"""Body templates and response_extract paths (OperateGPT's contract, fixed where it was broken)."""

import copy

import pytest

from balancer.templating import (
    ExtractError,
    UnsafeUrlValue,
    as_result_text,
    extract,
    fill,
    fill_url,
    misplaced_url_placeholder,
    parse_extract_path,
)

VALUES = {"{USER_PROMPT}": "hello", "{MODEL_NAME}": "m1", "{MODEL_TEMPERATURE}": 0.3}


def test_fill_returns_a_fresh_copy_and_never_mutates_the_template() -> None:
    template = {"input": "{USER_PROMPT}", "nested": [{"p": "{USER_PROMPT}"}]}
    before = copy.deepcopy(template)
    first = fill(template, VALUES)
    second = fill(template, {**VALUES, "{USER_PROMPT}": "other user"})
    assert template == before
    assert first["input"] == "hello"
    assert second["input"] == "other user"
    assert second["nested"][0]["p"] == "other user"


def test_an_exact_placeholder_takes_the_typed_value() -> None:
    filled = fill({"temperature": "{MODEL_TEMPERATURE}", "t": "t={MODEL_TEMPERATURE}"}, VALUES)
    assert filled == {"temperature": 0.3, "t": "t=0.3"}


def test_fill_recurses_through_dicts_and_lists() -> None:
    template = {"a": [{"b": ["{MODEL_NAME}", 1, None, True]}], "c": "{USER_PROMPT}!"}
    assert fill(template, VALUES) == {"a": [{"b": ["m1", 1, None, True]}], "c": "hello!"}


def test_a_prompt_containing_a_placeholder_is_not_expanded_again() -> None:
    values = {**VALUES, "{USER_PROMPT}": "say {MODEL_NAME}"}
    assert fill({"p": "<{USER_PROMPT}>"}, values) == {"p": "<say {MODEL_NAME}>"}


def test_fill_url_percent_encodes_values() -> None:
    url = fill_url(
        "http://h/gen?q={USER_PROMPT}&m={MODEL_NAME}", {**VALUES, "{USER_PROMPT}": "a b&c"}
    )
    assert url == "http://h/gen?q=a%20b%26c&m=m1"


@pytest.mark.parametrize(
    ("path", "document", "expected"),
    [
        (
            "data.items[].attributes.answer",
            {"data": {"items": [{"attributes": {"answer": "x"}}]}},
            "x",
        ),
        ("a.b[2].c", {"a": {"b": [{}, {}, {"c": "third"}]}}, "third"),
        ("[].text", [{"text": "root"}], "root"),
        ("choices[0].message.content", {"choices": [{"message": {"content": "hi"}}]}, "hi"),
        ("a", {"a": {"n": 1}}, {"n": 1}),
    ],
)
def test_extract_paths(path: str, document: object, expected: object) -> None:
    assert extract(document, parse_extract_path(path), "worker") == expected


def test_non_string_results_become_json_text() -> None:
    assert as_result_text({"n": 1}) == '{"n":1}'
    assert as_result_text([1, 2]) == "[1,2]"
    assert as_result_text(3) == "3"
    assert as_result_text("plain") == "plain"


def test_a_missing_path_names_where_it_stopped() -> None:
    path = parse_extract_path("data.items[].attributes.answer")
    with pytest.raises(ExtractError, match=r"data\.items\[0\]\.attributes"):
        extract({"data": {"items": [{"other": 1}]}}, path, "worker w1")


@pytest.mark.parametrize("bad", ["a..b", "a[x]", "a.[", "", "a]"])
def test_invalid_paths_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid segment"):
        parse_extract_path(bad)


HOSTILE = "../../admin?x=1#f"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("http://h/gen?q={USER_PROMPT}", "http://h/gen?q=..%2F..%2Fadmin%3Fx%3D1%23f"),
        ("http://h/gen/{USER_PROMPT}/x", "http://h/gen/..%2F..%2Fadmin%3Fx%3D1%23f/x"),
        ("http://h/gen/{USER_PROMPT}", "http://h/gen/..%2F..%2Fadmin%3Fx%3D1%23f"),
        ("http://h?q={USER_PROMPT}", "http://h?q=..%2F..%2Fadmin%3Fx%3D1%23f"),
    ],
)
def test_a_filled_value_stays_inside_one_path_segment_or_query_value(
    template: str, expected: str
) -> None:
    """`/`, `?`, `#`, `&`, `=` of a prompt are percent-encoded: it cannot add a segment, start a
    query or a fragment, or add a query parameter."""
    assert fill_url(template, {**VALUES, "{USER_PROMPT}": HOSTILE}) == expected


def test_a_percent_in_a_value_is_encoded_too() -> None:
    """An already encoded value arrives as it was written, not decoded once more."""
    url = fill_url("http://h/g/{USER_PROMPT}", {**VALUES, "{USER_PROMPT}": "%2e%2e%2F"})
    assert url == "http://h/g/%252e%252e%252F"


@pytest.mark.parametrize(
    ("template", "prompt"),
    [
        ("http://h/g/{USER_PROMPT}", "."),
        ("http://h/g/{USER_PROMPT}", ".."),
        ("http://h/g/{USER_PROMPT}/x", ".."),
        ("http://h/g/%2E{USER_PROMPT}", "."),
    ],
)
def test_a_value_that_would_make_a_whole_dot_segment_is_refused(template: str, prompt: str) -> None:
    """HTTP clients (aiohttp among them) remove `.` and `..` segments, percent-encoded ones
    too, so no encoding keeps them: such a value is refused."""
    with pytest.raises(UnsafeUrlValue, match="changes the path"):
        fill_url(template, {**VALUES, "{USER_PROMPT}": prompt})


def test_dots_are_fine_inside_a_segment_and_in_the_query() -> None:
    values = {**VALUES, "{USER_PROMPT}": ".."}
    assert fill_url("http://h/g/v{USER_PROMPT}?q={USER_PROMPT}", values) == "http://h/g/v..?q=.."
    assert fill_url("http://h/g/{USER_PROMPT}{USER_PROMPT}", values) == "http://h/g/...."


def test_dot_segments_the_template_itself_has_are_left_to_it() -> None:
    assert fill_url("http://h/a/../g?q={USER_PROMPT}", VALUES) == "http://h/a/../g?q=hello"


def test_placeholders_outside_the_path_and_query_are_not_filled() -> None:
    """A registration cannot put them there; were one stored, the prompt still could not
    choose the host."""
    url = fill_url("http://{USER_PROMPT}:{MODEL_NAME}/g#{USER_PROMPT}", VALUES)
    assert url == "http://{USER_PROMPT}:{MODEL_NAME}/g#{USER_PROMPT}"


@pytest.mark.parametrize(
    ("template", "part"),
    [
        ("{USER_PROMPT}://h/g", "scheme"),
        ("http://{USER_PROMPT}/g", "host"),
        ("http://api.{MODEL_NAME}.example/g", "host"),
        ("http://h{USER_PROMPT}", "host"),
        ("http://h:{MODEL_TEMPERATURE}/g", "port"),
        ("http://[::1]:{MODEL_NAME}/g", "port"),
        ("http://{USER_PROMPT}@h/g", "user info"),
        ("http://h/g#{USER_PROMPT}", "fragment"),
        ("http://h/g/{USER_PROMPT}?q={MODEL_NAME}", None),
        ("http://h?q={USER_PROMPT}", None),
        ("http://[::1]:8000/{USER_PROMPT}", None),
        ("http://h:8000/g", None),
    ],
)
def test_misplaced_url_placeholder_names_the_part(template: str, part: str | None) -> None:
    assert misplaced_url_placeholder(template) == part
