"""Settings: flags beat BALANCER_* environment variables, which beat the YAML file."""

from pathlib import Path

import pytest

from balancer.cli import build_parser
from balancer.config import ConfigError, Settings, load_settings, read_config_file


def test_defaults() -> None:
    settings = load_settings()
    assert settings.port == 8007
    assert settings.store == "sqlite:///./balancer.db"
    assert settings.admin_token is None
    assert settings.api_keys == []
    assert settings.log_format == "json"


def test_flags_beat_env_beat_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALANCER_PROBE_INTERVAL", "0.5")
    monkeypatch.setenv("BALANCER_HEALTHY_THRESHOLD", "4")
    file_values = {"probe_interval": 2.5, "healthy_threshold": 3, "unhealthy_threshold": 7}
    settings = load_settings(file_values=file_values, overrides={"healthy_threshold": "5"})
    assert settings.probe_interval == 0.5  # env beats file
    assert settings.healthy_threshold == 5  # flag beats env
    assert settings.unhealthy_threshold == 7  # file beats default


def test_api_keys_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALANCER_API_KEYS", "k1, k2,,k3")
    assert load_settings().api_keys == ["k1", "k2", "k3"]


def test_secrets_do_not_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALANCER_ADMIN_TOKEN", "s3cret")
    settings = load_settings()
    assert "s3cret" not in repr(settings)
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "s3cret"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"probe_interval": 0}, "probe_interval (BALANCER_PROBE_INTERVAL)"),
        ({"probe_interval": "soon"}, "probe_interval"),
        ({"log_format": "xml"}, "log_format"),
        ({"cache_threshold": 1.5}, "cache_threshold"),
        ({"balance_rel_threshold": 0.5}, "balance_rel_threshold"),
        ({"no_such_setting": 1}, "unknown setting 'no_such_setting'"),
    ],
)
def test_bad_settings_are_one_clear_error(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        load_settings(file_values=values)
    assert message in str(info.value)


def test_config_file_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_config_file(path)
    path.write_text("probe_interval: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_config_file(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_config_file(tmp_path / "missing.yaml")


def test_help_documents_every_setting() -> None:
    text = build_parser().format_help()
    for name in Settings.model_fields:
        assert f"BALANCER_{name.upper()}" in text
