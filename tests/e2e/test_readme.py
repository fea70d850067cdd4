"""The README's curl examples run, unchanged but for the port, against `balancer serve --demo`."""

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from balancer.fakes.processes import BalancerProcess

README = Path(__file__).parents[2] / "README.md"


def shell_examples() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    return [b for b in blocks if "curl" in b and "scripts/" not in b]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BalancerProcess]:
    balancer = BalancerProcess(tmp_path_factory.mktemp("readme"), args=["--demo"])
    balancer.start()
    yield balancer
    balancer.stop()


def test_the_readme_has_examples_for_every_endpoint() -> None:
    text = "\n".join(shell_examples())
    for path in (
        "/api/server/register",
        "/api/server/workers",
        "/api/server/offline",
        "/api/server/drain",
        "/api/server/weight",
        "/api/server/live",
        "/api/v1/chat/completions",
        "/v1/models",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/audio/speech",
        "/v1/rerank",
        "/v2/rerank",
        "/v1/score",
        "/v1/models/demo",
        "/healthz",
        "/readyz",
    ):
        assert path in text


@pytest.mark.parametrize("script", shell_examples(), ids=lambda s: s.split("\n")[0][:40])
def test_readme_example_runs(demo: BalancerProcess, script: str) -> None:
    script = script.replace("127.0.0.1:8007", f"127.0.0.1:{demo.port}")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert "internal error" not in done.stdout
    if '"model": "demo"' in script or '"model_name": "demo"' in script:
        assert '"success":false' not in done.stdout and '"error"' not in done.stdout
