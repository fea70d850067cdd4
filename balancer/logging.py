"""structlog, configured in one place: JSON (orjson) or console, request context via contextvars."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import orjson
import structlog

REDACTED = "***"
_SECRET_WORDS = ("authorization", "key", "token", "secret", "password", "cookie")


def is_secret_header(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def redact_headers(headers: Mapping[str, str] | None) -> dict[str, str] | None:
    """Header values that look like secrets replaced by ***, for listings and logs."""
    if headers is None:
        return None
    return {k: (REDACTED if is_secret_header(k) else v) for k, v in headers.items()}


def _redact_event(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in ("header", "headers"):
        value = event.get(key)
        if isinstance(value, Mapping):
            event[key] = redact_headers(value)
    return event


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


def configure_logging(*, log_format: str = "json", level: str = "info") -> None:
    """Configure structlog (and route uvicorn's stdlib loggers through the same level)."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_event,
    ]
    renderer: Any
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        processors.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.INFO), stream=sys.stderr, format="%(message)s")


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
