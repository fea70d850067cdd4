"""The `balancer` command's own help: every command's, as users reach them."""

import argparse

import pytest

from balancer.cli import build_parser
from balancer.config import Settings


def commands() -> list[str]:
    parser = build_parser()
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(subparsers.choices)


@pytest.mark.parametrize("argv", [["--help"], *([c, "--help"] for c in commands())])
def test_help_of_every_command_prints_and_exits_0(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: balancer")


def test_serve_help_lists_every_setting_as_a_flag_and_a_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    for name in Settings.model_fields:
        assert f"BALANCER_{name.upper()}" in out
        if name not in ("host", "port"):
            assert f"--{name.replace('_', '-')}" in out
    assert "in %." in out  # a % in a description is shown, not taken for a format
