"""cache_aware in front of simulated vLLM engines: each tenant's long system prompt finds one
worker, where its cache is, and every worker gets tenants."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from balancer.fakes.processes import WorkerProcess
from tests.e2e.conftest import register_openai, unique_model, worker_metrics

TENANTS = 8
QUESTIONS = 10


def system_prompt(tenant: int) -> str:
    return f"You are the assistant of tenant {tenant}. " + " ".join(
        f"rule{tenant}-{i}" for i in range(200)
    )


def test_requests_sharing_a_long_prefix_go_to_one_worker_and_every_worker_gets_traffic(
    client: httpx.Client, spawn: Callable[..., WorkerProcess]
) -> None:
    model = unique_model()
    engines = [
        spawn(f"e{i}", engine=True, max_tokens=4, decode_step=0.001, prefill_tokens_per_s=1e6)
        for i in range(4)
    ]
    for engine in engines:
        register_openai(client, model, engine.url, strategy="cache_aware")

    def ask(job: tuple[int, int]) -> tuple[int, str]:
        tenant, question = job
        body = {
            "model": model,
            "messages": [
                {"role": "system", "content": system_prompt(tenant)},
                {"role": "user", "content": f"question {question}"},
            ],
        }
        reply = client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        return tenant, str(reply.json()["choices"][0]["message"]["content"]).split()[0]

    jobs = [(t, q) for q in range(QUESTIONS) for t in range(TENANTS)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, jobs))
    by_tenant: dict[int, Counter[str]] = defaultdict(Counter)
    for tenant, worker in answers:
        by_tenant[tenant][worker] += 1
    for tenant, counts in by_tenant.items():
        assert counts.most_common(1)[0][1] >= 0.8 * QUESTIONS, (tenant, counts)
    served = Counter(worker for _, worker in answers)
    assert set(served) == {f"[e{i}]" for i in range(4)}, served
    # The engines' own counters agree: most prompt tokens were found in their caches.
    hits = queries = 0.0
    for engine in engines:
        found = worker_metrics(engine)
        hits += found["vllm:prefix_cache_hits_total"]
        queries += found["vllm:prefix_cache_queries_total"]
    assert hits / queries > 0.7, (hits, queries)
