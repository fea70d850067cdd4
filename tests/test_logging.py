"""One log format: what other libraries log through the standard library (uvicorn, asyncio,
APScheduler) is rendered like our own events; httpx's line per request is not written."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest
import structlog

from balancer.cli import _uvicorn_config
from balancer.config import Settings
from balancer.logging import configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back for the other tests."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


async def app(scope: object, receive: object, send: object) -> None:
    pass


def test_standard_library_records_are_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(log_format="json", level="info")
    logging.getLogger("apscheduler.scheduler").warning("job %s skipped", "w1")
    structlog.get_logger("probes").info("worker_healthy", worker="w1")
    first, second = (orjson.loads(line) for line in lines(capsys))
    assert first["event"] == "job w1 skipped"
    assert (first["level"], first["logger"]) == ("warning", "apscheduler.scheduler")
    assert "timestamp" in first
    assert (second["event"], second["worker"]) == ("worker_healthy", "w1")


def test_uvicorn_lines_are_json_with_the_servers_configuration(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(log_format="json", level="info")
    _uvicorn_config(app, Settings())  # what `balancer serve` runs uvicorn with
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    [line] = lines(capsys)
    assert orjson.loads(line)["event"] == "Application startup complete."


def test_httpx_request_lines_are_not_written(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(log_format="json", level="info")
    logging.getLogger("httpx").info('HTTP Request: GET http://w1/health "HTTP/1.1 200 OK"')
    assert lines(capsys) == []


def test_an_exception_logged_by_a_library_is_one_json_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(log_format="json", level="info")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
    [line] = lines(capsys)
    event = orjson.loads(line)
    assert event["event"] == "Task exception was never retrieved"
    assert "RuntimeError: boom" in event["exception"]


def test_console_format_renders_library_records_as_console_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(log_format="console", level="info")
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    [line] = lines(capsys)
    assert "Application startup complete." in line
    assert "[info" in line and not line.startswith("{")
