"""structlog, configured in one place: JSON (orjson) or console, request context via contextvars.

Our own events go straight from structlog to stderr (the access log is on the hot path); what
other libraries log through the standard library (uvicorn, asyncio, aiohttp, APScheduler) goes
through a root handler whose `structlog.stdlib.ProcessorFormatter` renders it the same way, so
every line of the log has one format.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import orjson
import structlog

REDACTED = "***"
_QUIET_LOGGERS = {
    # One INFO line per request: every probe used to write one (two thirds of the log).
    "httpx": logging.WARNING,
}
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
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
    """Configure structlog, and render the standard library's records with it."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_event,
    ]
    renderer: Any
    rendering: list[Any] = []
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        rendering.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    structlog.configure(
        processors=[*processors, *rendering, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*processors, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *rendering,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Other libraries' debug lines would drown ours: they log from INFO up.
    root.setLevel(max(numeric, logging.INFO))
    for name, quiet_level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet_level)
    logging.captureWarnings(True)
    _hand_uvicorn_to_root()


def _hand_uvicorn_to_root() -> None:
    """uvicorn's loggers write plain text through handlers of their own: hand their records to
    the root's handler. (Our servers are configured with `log_config=None`, so uvicorn does not
    put its handlers back.)"""
    for name in _UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
