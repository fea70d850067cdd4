"""Body templates and response_extract paths (OperateGPT's contract, fixed where it was broken)."""

import copy

import pytest

from balancer.templating import (
    ExtractError,
    as_result_text,
    extract,
    fill,
    fill_url,
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
