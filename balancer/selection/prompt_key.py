"""What a prefix-aware policy routes on: a request's prompt as one text, in the order the engine
sees it, so that requests that share a prefix share the start of their key."""

from __future__ import annotations

from typing import Any

import orjson


def prompt_key(data: dict[str, Any]) -> str | None:
    """A chat's rendered conversation (system prompt first, as sent), or a completion's prompt;
    None for anything else."""
    messages = data.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        for message in messages:
            if not isinstance(message, dict):
                return None
            content = message.get("content")
            text = content if isinstance(content, str) else orjson.dumps(content).decode()
            parts.append(f"<{message.get('role')}>{text}")
        return "\n".join(parts)
    prompt = data.get("prompt", data.get("input"))
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    return None
