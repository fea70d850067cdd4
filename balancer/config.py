"""Settings: command-line flags beat `BALANCER_*` environment variables, then the YAML file."""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from balancer.types import STRATEGIES, Strategy

# Every default, once: the settings below use them, and so do the parts that take a value of
# their own in tests (the forwarder, the retry budget, the health policy, the probe scheduler).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8007
DEFAULT_STORE = "sqlite:///./balancer.db"
DEFAULT_PROBE_INTERVAL = 5.0
DEFAULT_PROBE_TIMEOUT = 2.0
DEFAULT_PROBE_JITTER = 0.1
DEFAULT_HEALTHY_THRESHOLD = 2
DEFAULT_UNHEALTHY_THRESHOLD = 3
DEFAULT_PASSIVE_FAILURES = 5
DEFAULT_BASE_EJECTION_TIME = 30.0
DEFAULT_MAX_EJECTION_TIME = 300.0
DEFAULT_MAX_EJECTION_PERCENT = 50.0
DEFAULT_STRATEGY: Strategy = "least_latency"
DEFAULT_CACHE_THRESHOLD = 0.5
DEFAULT_BALANCE_ABS_THRESHOLD = 16.0
DEFAULT_BALANCE_REL_THRESHOLD = 1.5
DEFAULT_MAX_RETRIES = 2
DEFAULT_RETRY_BUDGET_RATIO = 0.2
DEFAULT_RETRY_BUDGET_MIN_PER_SECOND = 3.0
DEFAULT_REQUEST_TIMEOUT = 600.0
DEFAULT_QUEUE_TIMEOUT = 30.0
DEFAULT_SHUTDOWN_GRACE = 30.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_WORKER_TIMEOUT = 600.0
DEFAULT_STREAM_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_RETRY_AFTER = 60.0
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_UPSTREAM_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_QUEUE = 1000

ENV_PREFIX = "BALANCER_"

# The YAML file's values for the Settings being built; a ContextVar so the file source has no
# global state and two loads (e.g. in tests) never see each other's file.
_file_values: ContextVar[dict[str, Any] | None] = ContextVar("_file_values", default=None)


class ConfigError(Exception):
    """A setting or the config file is wrong; the CLI prints it in one line and exits 1."""


class _FileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_file_values.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_values.get() or {})


class Settings(BaseSettings):
    """Every setting of the service. Durations are float seconds."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True
    )

    host: str = Field(DEFAULT_HOST, description="Address to listen on.")
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="Port to listen on.")
    store: str = Field(
        DEFAULT_STORE,
        description="Where the registry is kept: sqlite:///relative.db, sqlite:////abs.db, "
        "sqlite:///:memory:, or redis://[:password@]host:6379/0 (rediss:// for TLS) for "
        "replicas sharing one registry.",
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token required by register/offline. Unset: only loopback "
        "clients may call them.",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated host names, besides loopback ones, that admin calls may "
        "name in Host while BALANCER_ADMIN_TOKEN is unset (a guard against DNS rebinding).",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated bearer keys required by the inference APIs. Unset: open.",
    )
    probe_interval: float = Field(
        DEFAULT_PROBE_INTERVAL, gt=0, description="Seconds between health probes of a worker."
    )
    probe_timeout: float = Field(
        DEFAULT_PROBE_TIMEOUT, gt=0, description="Seconds one health probe may take."
    )
    unhealthy_threshold: int = Field(
        DEFAULT_UNHEALTHY_THRESHOLD,
        ge=1,
        description="Consecutive probe failures that eject a worker.",
    )
    healthy_threshold: int = Field(
        DEFAULT_HEALTHY_THRESHOLD,
        ge=1,
        description="Consecutive probe successes that return a worker to service.",
    )
    probe_jitter: float = Field(
        DEFAULT_PROBE_JITTER,
        ge=0,
        le=1,
        description="Random delay added to each probe, as a share of the interval.",
    )
    passive_failures: int = Field(
        DEFAULT_PASSIVE_FAILURES,
        ge=1,
        description="Consecutive failed live requests that eject a worker at once.",
    )
    base_ejection_time: float = Field(
        DEFAULT_BASE_EJECTION_TIME,
        gt=0,
        description="Seconds a passive ejection lasts, times the worker's ejection multiplier "
        "(one more per ejection, one less per this many seconds in service).",
    )
    max_ejection_time: float = Field(
        DEFAULT_MAX_EJECTION_TIME, gt=0, description="Longest passive ejection, seconds."
    )
    max_ejection_percent: float = Field(
        DEFAULT_MAX_EJECTION_PERCENT,
        ge=0,
        le=100,
        description="Most of a model's workers live traffic may eject, in %.",
    )
    strategy: Strategy = Field(
        DEFAULT_STRATEGY,
        description=f"Default worker selection: {', '.join(STRATEGIES)} (a registration's "
        "`strategy` sets it per model).",
    )
    cache_threshold: float = Field(
        DEFAULT_CACHE_THRESHOLD,
        ge=0,
        le=1,
        description="cache_aware: the share of a prompt a worker must have been sent before for "
        "its prefix to count (docs/balancing.md).",
    )
    balance_abs_threshold: float = Field(
        DEFAULT_BALANCE_ABS_THRESHOLD,
        ge=0,
        description="cache_aware and sessions: a prompt's (a session's) worker gives way to the "
        "least loaded one when its load (in flight + engine queue) is more than this above it "
        "and more than balance_rel_threshold times it.",
    )
    balance_rel_threshold: float = Field(
        DEFAULT_BALANCE_REL_THRESHOLD,
        ge=1,
        description="See balance_abs_threshold.",
    )
    stream_usage: bool = Field(
        True,
        description="Ask OpenAI workers for token usage in streams (stream_options.include_usage)"
        "; turn off for servers that reject the field.",
    )
    max_retries: int = Field(
        DEFAULT_MAX_RETRIES,
        ge=0,
        description="Other workers tried after a failed attempt, per request.",
    )
    retry_budget_ratio: float = Field(
        DEFAULT_RETRY_BUDGET_RATIO,
        ge=0,
        description="Retries may add at most this share to a model's requests.",
    )
    retry_budget_min_per_second: float = Field(
        DEFAULT_RETRY_BUDGET_MIN_PER_SECOND,
        ge=0,
        description="Retries per second a model may always make, whatever its traffic.",
    )
    connect_timeout: float = Field(
        DEFAULT_CONNECT_TIMEOUT, gt=0, description="Seconds to connect to a worker."
    )
    worker_timeout: float = Field(
        DEFAULT_WORKER_TIMEOUT,
        gt=0,
        description="Seconds a worker may take for a whole non-streamed answer, or for the first "
        "chunk of a stream (a registration's `timeout` sets it per worker).",
    )
    stream_idle_timeout: float = Field(
        DEFAULT_STREAM_IDLE_TIMEOUT,
        gt=0,
        description="Longest gap between two chunks of a stream, in seconds; a stalled stream "
        "then ends with an error event.",
    )
    request_timeout: float = Field(
        DEFAULT_REQUEST_TIMEOUT,
        gt=0,
        description="Seconds a request may take until its answer (its first chunk, for a "
        "stream), all attempts together; then the client gets a 504.",
    )
    max_retry_after: float = Field(
        DEFAULT_MAX_RETRY_AFTER,
        ge=0,
        description="Longest a worker's Retry-After keeps it out, in seconds.",
    )
    queue_timeout: float = Field(
        DEFAULT_QUEUE_TIMEOUT,
        ge=0,
        description="Seconds a request waits when every worker is at its max_concurrency.",
    )
    max_queue: int = Field(
        DEFAULT_MAX_QUEUE,
        ge=0,
        description="Requests of a model that may wait for a worker at its max_concurrency; "
        "more are answered 503 with Retry-After: 1.",
    )
    max_body_bytes: int = Field(
        DEFAULT_MAX_BODY_BYTES,
        ge=1,
        description="Largest request body, in bytes; a larger one is a 413, announced or chunked.",
    )
    max_upstream_body_bytes: int = Field(
        DEFAULT_MAX_UPSTREAM_BODY_BYTES,
        ge=1,
        description="Largest non-streamed answer taken from a worker, in bytes after any "
        "decompression; a larger one fails the attempt (streams are not bounded).",
    )
    shutdown_grace: float = Field(
        DEFAULT_SHUTDOWN_GRACE,
        ge=0,
        description="Seconds in-flight requests get to finish after SIGTERM.",
    )
    log_format: Literal["json", "console"] = Field("json", description="Log format.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level logged."
    )

    @field_validator("api_keys", "allowed_hosts", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSource(settings_cls))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read the YAML config file: settings by lower-case name, plus an optional `workers:` list."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of setting: value")
    return data


def load_settings(
    *, file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Build Settings from flags (overrides), the environment and the config file's values."""
    token = _file_values.set(file_values or {})
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(describe_settings_error(exc)) from None
    finally:
        _file_values.reset(token)


def describe_settings_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        name = ".".join(str(loc) for loc in error["loc"]) or "settings"
        if error["type"] == "extra_forbidden":
            parts.append(f"unknown setting {name!r} (known: {', '.join(Settings.model_fields)})")
        else:
            env = ENV_PREFIX + name.upper()
            parts.append(f"{name} ({env}): {error['msg']}, got {error.get('input')!r}")
    return "invalid configuration: " + "; ".join(parts)


def settings_reference() -> str:
    """One line per setting, for `balancer --help` and the README."""
    lines = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(default) or "(unset)"
        elif default is None:
            default = "(unset)"
        lines.append(f"  {ENV_PREFIX + name.upper():<32} {field.description} [default: {default}]")
    return "\n".join(lines)
