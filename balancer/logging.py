"""structlog, configured in one place: JSON (orjson) or console, request context via contextvars.

Our own events go straight from structlog to stderr (the access log is on the hot path); what
other libraries log through the standard library (uvicorn, asyncio, aiohttp, APScheduler) goes
through a root handler whose `structlog.stdlib.ProcessorFormatter` renders it the same way, so
every line of the log has one format.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import structlog

REDACTED = "***"
_QUIET_LOGGERS = {
    # One INFO line per request: every probe used to write one (two thirds of the log).
    "httpx": logging.WARNING,
}
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
_SECRET_WORDS = ("authorization", "key", "token", "secret", "password", "cookie")
_SECRET_PARAMS = ("key", "token", "secret", "password", "sig", "auth")
_URL_FIELDS = ("url", "req_url_template", "health_url", "store")
_REDACTED_FIELDS = frozenset({"header", "headers", *_URL_FIELDS, "error", "reason", "last_error"})
# Workers' URLs, and the store's (a Redis URL may hold its password).
_URL = re.compile(r"(?:https?|rediss?)://[^\s'\"<>]+")


def is_secret_header(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def redact_headers(headers: Mapping[str, str] | None) -> dict[str, str] | None:
    """Header values that look like secrets replaced by ***, for listings and logs."""
    if headers is None:
        return None
    return {k: (REDACTED if is_secret_header(k) else v) for k, v in headers.items()}


def redact_url(url: str) -> str:
    """A URL as people may see it: credentials (`user:pass@`) and the values of query parameters
    whose name looks like a secret (`key`, `token`, `secret`, `password`, `sig`, `auth`, as part
    of the name, any case) shown as ***."""
    if "@" not in url and "?" not in url:
        return url  # the common case: nothing to hide
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        query = "&".join(_redact_param(pair) for pair in query.split("&"))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_param(pair: str) -> str:
    name, equals, _ = pair.partition("=")
    lowered = name.lower()
    if equals and any(word in lowered for word in _SECRET_PARAMS):
        return f"{name}={REDACTED}"
    return pair


def redact_text(text: str) -> str:
    """Every URL in a message (a probe's error, say) redacted as `redact_url` does."""
    if "://" not in text:
        return text
    return _URL.sub(lambda match: redact_url(match.group(0)), text)


def _redact_event(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if _REDACTED_FIELDS.isdisjoint(event):
        return event  # the access log's line, every request: nothing to look at
    for key in ("header", "headers"):
        value = event.get(key)
        if isinstance(value, Mapping):
            event[key] = redact_headers(value)
    for key in _URL_FIELDS:
        value = event.get(key)
        if isinstance(value, str):
            event[key] = redact_url(value)
    for key in ("error", "reason", "last_error"):
        value = event.get(key)
        if isinstance(value, str):
            event[key] = redact_text(value)
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
