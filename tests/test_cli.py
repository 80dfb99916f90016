"""The command-line surface: every run option reaches the configuration, every command
explains itself, and the exit-code contract is printed where users look for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from nixbuild import config
from nixbuild.cli import cli
from nixbuild.errors import ExitCode

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


def nixbuild(
    *args: str | bytes, cwd: Path, env: dict[str, str | bytes] | None = None
) -> subprocess.CompletedProcess[str]:
    """nixbuild with no nix on PATH: these must all be refused before nix is even looked for."""
    empty = cwd.parent / "empty-bin"
    empty.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "nixbuild", *args],
        cwd=cwd,
        env={**os.environ, "PATH": str(empty), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_refused_before_anything_was_written(
    done: subprocess.CompletedProcess[str], message: str, cwd: Path
) -> None:
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert list(cwd.iterdir()) == []  # no logs/ run directory, no result link, no report
    assert not (Path(os.environ["XDG_STATE_HOME"]) / "nixbuild").exists()  # no ledger, no lock


HUGE = str(10**26)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # Once accepted, then a crash after the build: the ledger (SQLite) cannot store them.
        (["build", ".#x", "--cores", str(2**63)], "--cores: must be between 1 and 65536, got 9223"),
        (
            ["build", ".#x", "--max-jobs", HUGE],
            f"--max-jobs: must be between 1 and 65536, got {HUGE}",
        ),
        (["build", ".#x", "--cores", "65537"], "--cores: must be between 1 and 65536, got 65537"),
        (["develop", ".#x", "--max-jobs", "0"], "--max-jobs: must be between 1 and 65536, got 0"),
        (["run", "--", "nix", "build", ".#x", "--cores", HUGE], "--cores must be between 1 and"),
        (["run", "--", "nix", "build", ".#x", "--option", "max-jobs", HUGE], "between 1 and 65536"),
        # int() reads Arabic-Indic digits, and refuses 4300+ digits with a message about Python.
        (["build", ".#x", "--cores", "\u0663"], "'\u0663' is not a valid integer"),
        (["build", ".#x", "--max-attempts", "9" * 5000], "(5000 characters) is too large a number"),
        (["build", ".#x", "--max-duration", "\u0663s"], "expected a duration like 45s"),
        (["build", ".#x", "--max-duration", "9" * 5000 + "m"], "is too long a duration"),
        # `demo` once replaced a falsy --cores 0 with 8 and ran.
        (["demo", "--cores", "0"], "--cores: must be between 1 and 65536, got 0"),
        # history -n: OverflowError in SQLite, or "no matching runs" for 0 and -1.
        (["history", "-n", HUGE], f"{HUGE} is not in the range 1<=x<=100000"),
        (["history", "-n", "0"], "0 is not in the range 1<=x<=100000"),
        (["history", "--limit", "-1"], "-1 is not in the range 1<=x<=100000"),
        (["history", "-n", "\u0663"], "'\u0663' is not a valid integer"),
        (["service", "logs", "nightly", "-n", "0"], "0 is not in the range 1<=x<=100000"),
    ],
)
def test_bad_numbers_exit_2_before_anything_is_written(
    tmp_path: Path, args: list[str], message: str
) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    done = nixbuild(*args, cwd=cwd)
    assert_refused_before_anything_was_written(done, message, cwd)
    assert "int_max_str_digits" not in done.stderr and "OverflowError" not in done.stderr


def test_bad_env_number_exits_2(tmp_path: Path) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    done = nixbuild("build", ".#x", cwd=cwd, env={"NIXBUILD_CORES": str(2**63)})
    message = "NIXBUILD_CORES: must be between 1 and 65536, got 9223372036854775808"
    assert_refused_before_anything_was_written(done, message, cwd)


BAD = b"a\xffb"  # what bash passes for X=$(printf 'a\xffb'); Python sees 'a\udcffb'
NOT_UTF8 = "is not valid UTF-8: nixbuild needs UTF-8 paths and arguments"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build", ".#x", "--log-dir", BAD], f"argument 4 ('a\\xffb') {NOT_UTF8}"),
        (["build", ".#x", "--out-link", BAD], f"argument 4 ('a\\xffb') {NOT_UTF8}"),
        (["build", b"path:/x#\xc3\xa9" + BAD], f"argument 2 ('path:/x#\u00e9a\\xffb') {NOT_UTF8}"),
        (["build", ".#x", "--", "--option", BAD, "1"], f"argument 5 ('a\\xffb') {NOT_UTF8}"),
        (["run", "--", "nix", "build", BAD], f"argument 5 ('a\\xffb') {NOT_UTF8}"),
        (["history", "--installable", BAD], f"argument 3 ('a\\xffb') {NOT_UTF8}"),
        (["config", "--job", b"\n" + BAD], f"argument 3 ('\\na\\xffb') {NOT_UTF8}"),
    ],
)
def test_arguments_that_are_not_utf8_exit_2_before_anything_is_written(
    tmp_path: Path, args: list[str | bytes], message: str
) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    done = nixbuild(*args, cwd=cwd)
    assert_refused_before_anything_was_written(done, f"nixbuild: error: {message}\n", cwd)
    assert done.stderr.count("\n") == 1


def test_environment_values_that_are_not_utf8_exit_2(tmp_path: Path) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    done = nixbuild("build", ".#x", cwd=cwd, env={"NIXBUILD_LOG_DIR": BAD})
    message = f"environment variable NIXBUILD_LOG_DIR ('a\\xffb') {NOT_UTF8}"
    assert_refused_before_anything_was_written(done, message, cwd)
