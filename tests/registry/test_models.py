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
