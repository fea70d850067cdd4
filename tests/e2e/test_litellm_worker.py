"""LiteLLM's proxy as a worker, in front of a fake worker. LiteLLM is not a dependency of the
project: `scripts/install --dev` puts it in a venv of its own (.venv-litellm); another one can
be named by BALANCER_TEST_LITELLM. It starts in about 6 s. Its streams have their own shape:
the usage chunk keeps a choice with an empty delta, and every chunk names LiteLLM's own model
name."""

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai.types.responses import ResponseCompletedEvent

from balancer.fakes.processes import HOST, BalancerProcess, Process, WorkerProcess, free_port
from tests.e2e.conftest import metric, openai_sdk, unique_model
from tests.e2e.test_streams import metric_reaches, user

_INSTALLED = Path(__file__).parents[2] / ".venv-litellm" / "bin" / "litellm"
LITELLM = os.environ.get("BALANCER_TEST_LITELLM") or (
    str(_INSTALLED) if _INSTALLED.exists() else ""
)
KEY = "sk-llm-balancer-test-0123456789abcdef"

pytestmark = pytest.mark.skipif(
    not LITELLM,
    reason="LiteLLM is not installed (scripts/install --dev, or BALANCER_TEST_LITELLM=<litellm>)",
)


@pytest.fixture(scope="module")
def litellm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """LiteLLM's proxy on 127.0.0.1, serving `via-litellm` from a fake worker; its base URL."""
    tmp_path = tmp_path_factory.mktemp("litellm")
    upstream = WorkerProcess(tmp_path, "up")
    upstream.start()
    config = tmp_path / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: via-litellm\n"
        "    litellm_params:\n"
        "      model: openai/fake-model\n"
        f"      api_base: {upstream.url}/v1\n"
        "      api_key: unused\n"
    )
    port = free_port()
    proxy = Process(
        [LITELLM, "--config", str(config), "--host", HOST, "--port", str(port)],
        tmp_path / "litellm.log",
        # No fetch of its price list (there is no network), and the key it insists on.
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": KEY},
        ready_url=f"http://{HOST}:{port}/health/liveliness",
    )
    try:
        proxy.start(timeout=45)
        yield f"http://{HOST}:{port}/v1"
    finally:
        proxy.stop()
        upstream.stop()


def register_litellm(client: httpx.Client, litellm: str) -> str:
    model = unique_model()
    registration = {
        "model_name": model,
        "api": "openai",
        "req_url_template": litellm,
        "upstream_model": "via-litellm",
        "header": {"Authorization": f"Bearer {KEY}"},
    }
    assert client.post("/api/server/register", json=registration).status_code == 200
    return model


def test_litellm_as_a_worker_streams_clean_named_and_metered(
    client: httpx.Client, balancer: BalancerProcess, litellm: str
) -> None:
    model = register_litellm(client, litellm)
    openai_client = openai_sdk(balancer)

    chunks = list(
        openai_client.chat.completions.create(
            model=model, messages=user("hello there"), stream=True
        )
    )
    completion = openai_client.chat.completions.create(model=model, messages=user("hello there"))

    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "[up] hello there"
    assert {c.model for c in chunks} == {model}
    assert completion.model == model
    tokens = "balancer_output_tokens_total"
    # 3 words answered, twice (the fake worker counts words; LiteLLM passes its usage on).
    assert metric_reaches(client, tokens, 6, model=model, estimated="false") == 6
    assert metric(client, "balancer_time_to_first_token_seconds_count", model=model) == 1


def test_litellm_as_a_worker_serves_the_responses_api_streamed_metered_and_continued(
    client: httpx.Client, balancer: BalancerProcess, litellm: str
) -> None:
    """LiteLLM writes its own response ids (it encodes its deployment in them) and its own
    event stream: the balancer relays both, renamed, and meters them."""
    model = register_litellm(client, litellm)
    openai_client = openai_sdk(balancer)
    events = list(openai_client.responses.create(model=model, input="hello there", stream=True))
    last = events[-1]
    assert isinstance(last, ResponseCompletedEvent)
    assert last.response.output_text == "[up] hello there" and last.response.model == model
    # A stream is counted just after its last byte: the client may ask before that.
    ttft = "balancer_time_to_first_token_seconds_count"
    assert metric_reaches(client, ttft, 1, model=model) == 1
    follow = openai_client.responses.create(
        model=model, input="and then", previous_response_id=last.response.id
    )
    assert follow.output_text.startswith("[up] and then (after resp_up_")
    tokens = "balancer_output_tokens_total"
    # The fake worker counts words: 3, then those of the follow-up; LiteLLM passes them on.
    total = 3 + len(follow.output_text.split())
    assert metric_reaches(client, tokens, total, model=model, estimated="false") == total
