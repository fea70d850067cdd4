"""LiteLLM's proxy as a worker, in front of a fake worker. LiteLLM is not a dependency of the
project: `scripts/install --dev` puts it in a venv of its own (.venv-litellm); another one can
be named by BALANCER_TEST_LITELLM. It starts in about 6 s. Its streams have their own shape:
the usage chunk keeps a choice with an empty delta, and every chunk names LiteLLM's own model
name."""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from balancer.fakes.processes import HOST, BalancerProcess, Process, WorkerProcess, free_port
from tests.e2e.conftest import unique_model
from tests.e2e.test_streams import metric, metric_reaches, sdk, user

_INSTALLED = Path(__file__).parents[2] / ".venv-litellm" / "bin" / "litellm"
LITELLM = os.environ.get("BALANCER_TEST_LITELLM") or (
    str(_INSTALLED) if _INSTALLED.exists() else ""
)
KEY = "sk-llm-balancer-test-0123456789abcdef"

pytestmark = pytest.mark.skipif(
    not LITELLM,
    reason="LiteLLM is not installed (scripts/install --dev, or BALANCER_TEST_LITELLM=<litellm>)",
)


@pytest.fixture
def litellm(tmp_path: Path, spawn: Callable[..., WorkerProcess]) -> Iterator[str]:
    """LiteLLM's proxy on 127.0.0.1, serving `via-litellm` from a fake worker; its base URL."""
    upstream = spawn("up")
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
    proxy.start(timeout=45)
    try:
        yield f"http://{HOST}:{port}/v1"
    finally:
        proxy.stop()


def test_litellm_as_a_worker_streams_clean_named_and_metered(
    client: httpx.Client, balancer: BalancerProcess, litellm: str
) -> None:
    model = unique_model()
    registration = {
        "model_name": model,
        "api": "openai",
        "req_url_template": litellm,
        "upstream_model": "via-litellm",
        "header": {"Authorization": f"Bearer {KEY}"},
    }
    assert client.post("/api/server/register", json=registration).status_code == 200
    openai_client = sdk(balancer)

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
