"""OpenAI's objects where we read or make them ourselves: a conversation as one prompt, the
`usage` a worker reports, and completions for answers from workers that do not speak OpenAI."""

from __future__ import annotations

import os
import time
from typing import Any

from balancer.forwarding import sse


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
    return b"".join(sse.json_event(c) for c in chunks) + sse.DONE


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
    return sse.json_event(chunk) + sse.DONE


def usage_counts(document: object) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) from an OpenAI `usage` object, if it has one: a
    completion's (`prompt_tokens`, `completion_tokens`), a Responses API answer's or event's
    (`input_tokens`, `output_tokens`, in `response` for an event), or a reranker's
    (`total_tokens` alone, all of them input)."""
    if not isinstance(document, dict):
        return None
    usage = document.get("usage")
    if not isinstance(usage, dict):
        inner = document.get("response")
        usage = inner.get("usage") if isinstance(inner, dict) else None
        if not isinstance(usage, dict):
            return None
    if "prompt_tokens" in usage:
        prompt, completion = usage["prompt_tokens"], usage.get("completion_tokens", 0)
    elif "input_tokens" in usage:
        prompt, completion = usage["input_tokens"], usage.get("output_tokens", 0)
    else:
        prompt, completion = usage.get("total_tokens"), 0
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return prompt, completion


def estimated_usage(request: object, answer: object) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) estimated from a request and its answer, where the
    worker reported no usage: four characters a token."""
    return estimate_tokens(prompt_text(request)), estimate_tokens(answer_text(answer))


def prompt_text(request: object) -> str:
    """What a chat, completion or embeddings request sends the model, as one text."""
    if not isinstance(request, dict):
        return ""
    parts: list[str] = []
    messages = request.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                parts.append(_any_text(message.get("content")))
    for key in ("prompt", "input", "instructions"):
        value = request.get(key)
        if isinstance(value, list):
            # Responses API input items: messages whose content is text or text parts.
            value = [
                item.get("content") if isinstance(item, dict) and "content" in item else item
                for item in value
            ]
        parts.append(_any_text(value))
    return "\n".join(part for part in parts if part)


def answer_text(answer: object) -> str:
    """The text a completion's choices generated (content, reasoning, tool call arguments), or
    a Responses API answer's output."""
    output = answer.get("output") if isinstance(answer, dict) else None
    if isinstance(output, list):
        return "".join(_any_text(item.get("content")) for item in output if isinstance(item, dict))
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list):
        return ""
    parts: list[str] = []
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            for key in ("content", "reasoning_content"):
                parts.append(_any_text(message.get(key)))
            for call in message.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    parts.append(_any_text(function.get("arguments")))
        parts.append(_any_text(choice.get("text")))
    return "".join(parts)


_ONE_TOKEN = "    "
"""Four characters: what `estimate_tokens` counts as one token, for a prompt of token ids."""


def _any_text(value: object) -> str:
    """Text wherever a request or answer may hold it: a string, content parts, a list of
    strings or of token ids."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for item in value:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, int):
                texts.append(_ONE_TOKEN)
            elif isinstance(item, dict) and isinstance(item.get("text"), str):
                texts.append(item["text"])
            elif isinstance(item, list):
                texts.append(_any_text(item))
        return "".join(texts)
    return ""


def render_messages(messages: Any) -> str:
    """An OpenAI conversation as one prompt for a template worker.

    A lone user message is passed as it is; a longer conversation becomes `role: content` lines.
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty array of {role, content} objects")
    rendered: list[tuple[str, str]] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError("each message must be an object with a role and content")
        rendered.append((message["role"], _content_text(message.get("content"))))
    if len(rendered) == 1:
        return rendered[0][1]
    return "\n".join(f"{role}: {text}" for role, text in rendered)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        ]
        if not all(isinstance(text, str) for text in texts):
            raise ValueError("a text content part's text must be a string")
        return "".join(texts)
    raise ValueError("message content must be a string or an array of content parts")
