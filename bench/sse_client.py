"""A small async SSE load client: `python -m bench.sse_client URL SECONDS CONNECTIONS`.

Each connection sends streamed chat completions back to back and times the first byte (response
headers), the first token (first chunk with content) and the whole stream. Prints JSON.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

import aiohttp

BODY = json.dumps(
    {
        "model": "bench",
        "stream": True,
        "messages": [{"role": "user", "content": "stream sixteen chunks please"}],
    }
)


async def one_connection(
    session: aiohttp.ClientSession,
    url: str,
    until: float,
    samples: list[tuple[float, float, float]],
    errors: list[str],
) -> None:
    while time.perf_counter() < until:
        started = time.perf_counter()
        try:
            async with session.post(
                url, data=BODY, headers={"Content-Type": "application/json"}
            ) as resp:
                first_byte = time.perf_counter() - started
                first_token = None
                async for chunk in resp.content.iter_any():
                    if first_token is None and b'"content"' in chunk:
                        first_token = time.perf_counter() - started
                if resp.status != 200 or first_token is None:
                    errors.append(f"status {resp.status}")
                    continue
                samples.append((first_byte, first_token, time.perf_counter() - started))
        except aiohttp.ClientError as exc:
            errors.append(repr(exc))


async def main(url: str, seconds: float, connections: int) -> dict[str, float]:
    samples: list[tuple[float, float, float]] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        until = time.perf_counter() + seconds
        await asyncio.gather(
            *(one_connection(session, url, until, samples, errors) for _ in range(connections))
        )

    def p50(index: int) -> float:
        return statistics.median(s[index] for s in samples) * 1000 if samples else float("nan")

    return {
        "streams": len(samples),
        "errors": len(errors),
        "streams_per_second": len(samples) / seconds,
        "ttfb_ms": p50(0),
        "ttft_ms": p50(1),
        "total_ms": p50(2),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))))
