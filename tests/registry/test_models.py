"""Registrations: URL normalisation, stable ids, and validation that says how to fix things."""

import pytest

from balancer.errors import BadRequest
from balancer.registry.models import normalise_url, parse_spec, worker_id

GOOD = {
    "model_name": "proxyllm",
    "body": {"input": "{USER_PROMPT}"},
    "req_url_template": "http://127.0.0.1:8008/api/generate",
}


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("HTTP://Example.COM:80/gen/", "http://example.com/gen"),
        ("https://example.com:443/v1", "https://example.com/v1"),
        ("https://example.com:8443/v1/", "https://example.com:8443/v1"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://h/gen?q={USER_PROMPT}", "http://h/gen?q={USER_PROMPT}"),
        ("http://[::1]:8000/x", "http://[::1]:8000/x"),
    ],
)
def test_normalise_url(url: str, normal: str) -> None:
    assert normalise_url(url) == normal


@pytest.mark.parametrize("url", ["ftp://h/x", "127.0.0.1:8000/x", "http:///x", "http://h:99999/x"])
def test_normalise_url_rejects_what_is_not_http(url: str) -> None:
    with pytest.raises(ValueError):
        normalise_url(url)


def test_worker_id_is_the_same_for_equivalent_urls() -> None:
    assert worker_id("m", "HTTP://H:80/gen/") == worker_id("m", "http://h/gen")
    assert worker_id("m", "http://h/gen") != worker_id("other", "http://h/gen")


def test_a_good_registration_has_the_documented_defaults() -> None:
    spec = parse_spec(GOOD)
    # timeout None: the worker gets BALANCER_WORKER_TIMEOUT.
    assert (spec.api, spec.req_type, spec.weight, spec.timeout) == ("template", "POST", 1.0, None)
    assert spec.target_model == "proxyllm"


def test_operategpt_legacy_fields_are_accepted() -> None:
    parse_spec({**GOOD, "worker_type": "REMOTE", "is_stream": False, "req_param": {}})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"foo": 1}, "unknown field 'foo'"),
        ({"model_name": ""}, "model_name"),
        ({"model_name": "   "}, "must not be empty"),
        ({"model_name": 5}, "model_name"),
        ({"weight": -1}, "weight"),
        ({"weight": "heavy"}, "weight"),
        ({"weight": float("inf")}, "finite"),
        ({"timeout": 0}, "timeout"),
        ({"req_url_template": "ftp://h/x"}, "http:// or https://"),
        ({"req_type": "PUT"}, "req_type"),
        ({"api": "grpc"}, "api"),
        ({"body": {"input": "no placeholder"}}, "{USER_PROMPT}"),
        ({"response_extract": "a..b"}, "invalid segment"),
        ({"header": {"X": 1}}, "header"),
    ],
)
def test_bad_registrations_say_what_is_wrong(change: dict[str, object], message: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_spec({**GOOD, **change})
    assert message in info.value.message


def test_missing_required_fields_are_named() -> None:
    with pytest.raises(BadRequest, match="req_url_template is required"):
        parse_spec({"model_name": "m"})
    with pytest.raises(BadRequest, match="JSON object"):
        parse_spec(["not", "an", "object"])


def test_openai_workers_need_no_prompt_placeholder() -> None:
    spec = parse_spec(
        {
            "model_name": "m",
            "api": "openai",
            "req_url_template": "http://h:8000/v1",
            "upstream_model": "meta/llama",
        }
    )
    assert spec.target_model == "meta/llama"


def test_a_get_template_may_put_the_prompt_in_the_url() -> None:
    parse_spec(
        {"model_name": "m", "req_type": "get", "req_url_template": "http://h/q?p={USER_PROMPT}"}
    )


@pytest.mark.parametrize(
    ("url", "part"),
    [
        ("{USER_PROMPT}://h/q", "scheme"),
        ("http://{USER_PROMPT}/q", "host"),
        ("http://{MODEL_NAME}.example/q?p={USER_PROMPT}", "host"),
        ("http://h:{MODEL_TEMPERATURE}/q?p={USER_PROMPT}", "port"),
        ("http://{USER_PROMPT}@h/q", "user info"),
        ("http://h/q?p=x#{USER_PROMPT}", "fragment"),
    ],
)
def test_a_url_placeholder_outside_the_path_and_query_is_refused(url: str, part: str) -> None:
    """Placeholders may fill only the path and the query: the prompt must not choose the host
    it is sent to. The message names the part."""
    with pytest.raises(BadRequest) as info:
        parse_spec({"model_name": "m", "req_type": "GET", "req_url_template": url})
    assert f"may only fill the URL's path or query, not its {part}" in info.value.message


def test_url_placeholders_in_the_path_and_query_are_accepted() -> None:
    parse_spec(
        {
            "model_name": "m",
            "req_type": "GET",
            "req_url_template": "http://h:8000/models/{MODEL_NAME}/q?p={USER_PROMPT}",
        }
    )


def test_a_model_name_that_would_make_a_dot_segment_of_the_url_is_refused() -> None:
    with pytest.raises(BadRequest, match="changes the path"):
        parse_spec({**GOOD, "model_name": "..", "req_url_template": "http://h/m/{MODEL_NAME}/q"})


@pytest.mark.parametrize(
    "name", ["Content-Length", "transfer-encoding", "HOST", "Connection", "connection"]
)
def test_framing_headers_are_refused_in_any_case(name: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_spec({**GOOD, "header": {"X-Ok": "1", name: "x"}})
    assert f"header: {name} cannot be registered" in info.value.message


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b"])
def test_header_values_with_cr_lf_or_control_characters_are_refused(value: str) -> None:
    """The message names the header but does not quote its value, which may be a key."""
    with pytest.raises(BadRequest) as info:
        parse_spec({**GOOD, "header": {"Authorization": f"Bearer sk-{value}"}})
    message = info.value.message
    assert "the value of Authorization contains CR, LF" in message
    assert "sk-" not in message


@pytest.mark.parametrize("name", ["Bad Name", "X-A:", "X\r\nY", ""])
def test_header_names_that_are_not_tokens_are_refused(name: str) -> None:
    with pytest.raises(BadRequest, match="is not a valid header name"):
        parse_spec({**GOOD, "header": {name: "x"}})


def test_ordinary_headers_with_tabs_and_unicode_are_accepted() -> None:
    spec = parse_spec({**GOOD, "header": {"Authorization": "Bearer\tsk", "X-Name": "é"}})
    assert spec.header == {"Authorization": "Bearer\tsk", "X-Name": "é"}
