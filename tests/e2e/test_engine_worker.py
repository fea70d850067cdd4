"""`balancer fake-worker --engine` over real HTTP: answers token by token, queues beyond its
slots, and reports vLLM's metrics as vLLM does (read back with prometheus_client's parser)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from balancer.fakes.processes import WorkerProcess
from tests.e2e.conftest import eventually, worker_metrics

SYSTEM = "you are a careful assistant who answers every question with precision and care " * 3


def chat(user: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
        **fields,
    }


def test_answers_stream_token_by_token_and_the_second_asking_hits_the_cache(
    spawn: Callable[..., WorkerProcess],
) -> None:
    worker = spawn("e1", engine=True, max_tokens=4, decode_step=0.001)
    with httpx.Client(base_url=worker.url, timeout=10) as client:
        whole = client.post("/v1/chat/completions", json=chat("hello there")).json()
        assert whole["choices"][0]["message"]["content"] == "[e1] the quick brown"
        assert whole["usage"]["completion_tokens"] == 4
        assert whole["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        events = []
        body = chat("hello there", stream=True, stream_options={"include_usage": True})
        with client.stream("POST", "/v1/chat/completions", json=body) as reply:
            events = [line for line in reply.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert len(events) == 4 + 3  # a token an event, the finish, the usage, [DONE]
        assert '"cached_tokens":32' in events[-2]  # two 16-token blocks of the system prompt
    found = worker_metrics(worker)
    prompt = found["vllm:prompt_tokens_total"]
    assert found["vllm:prefix_cache_queries_total"] == prompt
    assert found["vllm:prefix_cache_hits_total"] == 32
    assert found["vllm:generation_tokens_total"] == 8


def test_requests_beyond_the_slots_wait_and_metrics_say_so(
    spawn: Callable[..., WorkerProcess],
) -> None:
    worker = spawn("e2", engine=True, slots=1, max_tokens=10_000, decode_step=0.01)
    body = chat("a long answer", stream=True)
    with httpx.Client(base_url=worker.url, timeout=10) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as first:
            lines = first.iter_lines()  # kept: a dropped generator closes the stream
            next(lines)  # running
            with client.stream("POST", "/v1/chat/completions", json=body):
                found = worker_metrics(worker)
                assert found["vllm:num_requests_running"] == 1, found
                assert found["vllm:num_requests_waiting"] == 1, found
                assert 0 < found["vllm:kv_cache_usage_perc"] <= 1
        # The clients left: the engine frees their slot and place in the queue.
        eventually(lambda: not worker_metrics(worker)["vllm:num_requests_running"], within=10)
        found = worker_metrics(worker)
        assert found["vllm:num_requests_running"] == found["vllm:num_requests_waiting"] == 0
        assert found["vllm:kv_cache_usage_perc"] == 0


def test_reset_prefix_cache_starts_the_cache_cold(spawn: Callable[..., WorkerProcess]) -> None:
    worker = spawn("e4", engine=True, max_tokens=2, decode_step=0.001)
    with httpx.Client(base_url=worker.url, timeout=10) as client:
        client.post("/v1/chat/completions", json=chat("hello")).raise_for_status()
        assert client.post("/reset_prefix_cache").json() == {"reset": True}
        again = client.post("/v1/chat/completions", json=chat("hello")).json()
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_bad_requests_get_a_clear_400(spawn: Callable[..., WorkerProcess]) -> None:
    worker = spawn("e3", engine=True, cache_blocks=4)
    with httpx.Client(base_url=worker.url, timeout=10) as client:
        bad: list[dict[str, Any]] = [{"messages": []}, chat("x", max_tokens=0), chat("x " * 100)]
        for body in bad:
            reply = client.post("/v1/chat/completions", json=body)
            assert reply.status_code == 400, body
            assert reply.json()["error"]["message"]
        assert client.post("/v1/completions", content=b"{not json").status_code == 400
        # The other fake-worker routes still answer.
        assert client.get("/v1/models").status_code == 200
        reply = client.post("/v1/completions", json={"prompt": "one two three", "max_tokens": 2})
        assert reply.json()["choices"][0]["text"] == "[e3] the"
        template = client.post("/api/generate", json={"input": "hi"}).json()
        assert template["data"]["items"][0]["attributes"]["answer"] == "[e3] hi"
