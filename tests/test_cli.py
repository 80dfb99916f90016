"""The command-line surface: every run option reaches the configuration, every command
explains itself, and the exit-code contract is printed where users look for it."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from nixbuild import config
from nixbuild.cli import cli

# Options that steer the CLI itself rather than the run's configuration.
NOT_CONFIG = {
    "job",
    "config_path",
    "fresh",
    "help",
    "nix_args",
    "installable",
    "command",
    "nix_command",
}


@pytest.mark.parametrize("name", ["build", "develop", "run", "demo"])
def test_every_run_option_is_a_config_key(name: str) -> None:
    command = cli.commands[name]
    params = {p.name for p in command.params if p.name is not None}
    missing = params - NOT_CONFIG - set(config.BY_NAME)
    assert not missing, f"options of `{name}` that config.load would never see: {missing}"


def all_commands() -> list[list[str]]:
    found = []
    for name, command in cli.commands.items():
        found.append([name])
        if isinstance(command, click.Group):
            found += [[name, sub] for sub in command.commands]
    return found


@pytest.mark.parametrize("path", all_commands(), ids=" ".join)
def test_every_command_has_help(path: list[str]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output and len(result.output.splitlines()) > 3


def test_exit_codes_are_in_the_help() -> None:
    result = CliRunner().invoke(cli, ["build", "--help"])
    for code in ("0 ", "1 ", "2 ", "3 ", "75 ", "130 "):
        assert f"    {code}" in result.output
    assert "143 by SIGTERM" in result.output


def test_module_entry_point_and_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nixbuild", "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and done.stdout.startswith("nixbuild, version ")


def test_unknown_command_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nixbuild", "frobnicate"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "No such command 'frobnicate'" in done.stderr and "Traceback" not in done.stderr
