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
    ctx = click.Context(cli)
    found = []
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None, name
        found.append([name])
        if isinstance(command, click.Group):
            found += [[name, sub] for sub in command.commands]
    return found


def test_lazy_commands_keep_help_fast_and_resolve() -> None:
    """`nixbuild --help` lists every command without importing the heavy modules."""
    code = (
        "import sys; from nixbuild.cli import cli; from click.testing import CliRunner; "
        "CliRunner().invoke(cli, ['--help']); "
        "print(sorted(m for m in sys.modules if m in ('sh', 'nixbuild.classify_rules', "
        "'nixbuild.cli_torch', 'nixbuild.cli_service')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    assert set(cli.list_commands(click.Context(cli))) >= {"classify", "service", "doctor", "init"}


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
