"""OpenAI response objects, for answers from workers that do not speak OpenAI themselves."""

from __future__ import annotations

import os
import time
from typing import Any

import orjson


def estimate_tokens(text: str) -> int:
    """About four characters a token: a stand-in where the worker reports no usage."""
    return max(1, (len(text) + 3) // 4) if text else 0


def _usage(prompt: str, text: str) -> dict[str, int]:
    prompt_tokens, completion_tokens = estimate_tokens(prompt), estimate_tokens(text)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def chat_completion(model: str, prompt: str, text: str) -> dict[str, Any]:
    return {
        "id": _id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(prompt, text),
    }


def chat_completion_stream(model: str, prompt: str, text: str, include_usage: bool) -> bytes:
    """The whole answer as one SSE stream: a content chunk, a finish chunk, [DONE]."""
    base = {
        "id": _id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    chunks: list[dict[str, Any]] = [
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        },
        {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]},
    ]
    if include_usage:
        chunks.append({**base, "choices": [], "usage": _usage(prompt, text)})
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def text_completion(model: str, prompt: str, text: str) -> dict[str, Any]:
    return {
        "id": _id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
        "usage": _usage(prompt, text),
    }


def text_completion_stream(model: str, prompt: str, text: str) -> bytes:
    chunk = {**text_completion(model, prompt, text)}
    chunk.pop("usage")
    return b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n"
