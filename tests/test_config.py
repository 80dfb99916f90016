"""Configuration precedence (flags > env > file > defaults), sources, and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nixbuild import config
from nixbuild.errors import ConfigError, ExitCode

TOML = """\
cores = 6
log_dir = "/var/tmp/nb"

[jobs.torch]
installable = "nixpkgs#python312Packages.torch"
mode = "develop"
fallback = "nixpkgs#python312Packages.torch-bin"
max_jobs = 2
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nixbuild.toml"
    path.write_text(text)
    return path


def test_defaults_without_any_file(tmp_path: Path) -> None:
    cfg = config.load({}, environ={"HOME": str(tmp_path)}, cwd=tmp_path)
    assert cfg.file is None
    assert cfg["max_jobs"] == 1 and cfg.sources["max_jobs"] == "default"
    assert cfg["cores"] is None and cfg["log_dir"] == "logs"


def test_precedence_and_sources(tmp_path: Path) -> None:
    path = write(tmp_path, TOML)
    env = {"HOME": str(tmp_path), "NIXBUILD_MAX_JOBS": "3", "NIXBUILD_LOG_DIR": "/env/logs"}
    cfg = config.load({"log_dir": "/flag/logs"}, environ=env, cwd=tmp_path, job="torch")
    assert cfg["log_dir"] == "/flag/logs" and cfg.sources["log_dir"] == "--log-dir"
    assert cfg["max_jobs"] == 3 and cfg.sources["max_jobs"] == "NIXBUILD_MAX_JOBS"
    assert cfg["mode"] == "develop" and cfg.sources["mode"] == f"{path} [jobs.torch]"
    assert cfg["cores"] == 6 and cfg.sources["cores"] == str(path)
    assert cfg["max_attempts"] == 6 and cfg.sources["max_attempts"] == "default"
    assert cfg.jobs == ("torch",)


def test_user_config_dir_is_the_second_choice(tmp_path: Path) -> None:
    user = tmp_path / "xdg" / "nixbuild" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text("max_attempts = 2\n")
    cfg = config.load({}, environ={"XDG_CONFIG_HOME": str(tmp_path / "xdg")}, cwd=tmp_path)
    assert cfg.file == user and cfg["max_attempts"] == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cores = [\n", "invalid TOML"),
        ("cores = 0\n", ":1: cores: must be between 1 and 65536, got 0"),
        ('\n\nmode = "shell"\n', ":3: mode: expected one of build, develop"),
        ("corse = 4\n", ":1: unknown key 'corse'"),
        ('[jobs.x]\ndeadline = "25:00"\n', ":2: deadline: expected a time of day"),
        ("jobs = 3\n", "`jobs` must be a table"),
        ('max_duration = "soon"\n', "expected a duration like 45s, 0.5s, 90m or 2h30m"),
        ('network_backoff = "0.5.5s"\n', ":1: network_backoff: expected a duration"),
        ('\nstall_timeout = "1.5m"\n', ":2: stall_timeout: expected a duration"),
        ('heartbeat = "0.0s"\n', ":1: heartbeat: must be positive, got '0.0s'"),
        ("grace = -0.5\n", ":1: grace: must be positive, got -0.5"),
        ("oom_delay = -0.5\n", ":1: oom_delay: must be zero or more, got -0.5"),
        ("settle_delay = nan\n", ":1: settle_delay: expected a finite number of seconds"),
        # Hundreds of digits: float() gives inf (which once let a run crash mid-build on
        # its first decision line), int() * 3600 too large for a float; both refused.
        (f'settle_delay = "1{"0" * 400}s"\n', ":1: settle_delay: '1000"),
        (f'oom_delay = "{"9" * 400}h"\n', "is too long a duration"),
        (f'keep_size = "1{"0" * 400}G"\n', "is too large a size"),
        # Larger than nix (2^63-1) and the ledger's SQLite INTEGER accept: once a crash
        # (OverflowError) after the build, when the ledger stored the attempt.
        (f"cores = {10**26}\n", f":1: cores: must be between 1 and 65536, got {10**26}"),
        ("\n[jobs.x]\nmax_jobs = 65537\n", ":3: max_jobs: must be between 1 and 65536, got 65537"),
        (f"keep_runs = {2**63}\n", f":1: keep_runs: {2**63} is too large a number"),
        (f"keep_size = {2**63}\n", f":1: keep_size: {2**63} is too large a size"),
        (f"oom_delay = {10**400}\n", ":1: oom_delay: a number of about 400 digits is too long"),
        # tomllib recurses once per level (RecursionError) and int() refuses 4300+ digits.
        (f"x = {'[' * 5000}{']' * 5000}\n", "invalid TOML: arrays or tables nested too deeply"),
        (f"x = {'{a=' * 3000}1{'}' * 3000}\n", "invalid TOML: arrays or tables nested too deeply"),
        (f"cores = {'9' * 5000}\n", "invalid TOML: a number is too large"),
        # int(), str.isdigit() and \\d take Arabic-Indic digits; nixbuild reads ASCII only.
        ('cores = "\u0663"\n', ":1: cores: expected a whole number, got '\u0663'"),
        ('max_duration = "\u0663s"\n', ":1: max_duration: expected a duration like 45s"),
        ('grace = "\u0663"\n', ":1: grace: expected a duration like 45s"),
        ('keep_size = "\u0663G"\n', ":1: keep_size: expected a size like 512M"),
        ('deadline = "\u0663:00"\n', ":1: deadline: expected a time of day"),
        # Python's "Exceeds the limit (4300 digits)" message must not reach the user.
        (f'max_duration = "{"9" * 5000}m"\n', ":1: max_duration: '99999"),
        (f'max_duration = "{"9" * 5000}h"\n', "(5001 characters) is too long a duration"),
    ],
)
def test_invalid_files_name_file_line_and_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load({}, environ={}, cwd=tmp_path)
    assert str(path) in str(info.value) and message in str(info.value)
    assert info.value.exit_code == ExitCode.USAGE
    assert "int_max_str_digits" not in str(info.value)


# Every string option: a NUL once failed only when the value was used ("embedded null
# byte"), for --json and --junit only after the build.
STRING_OPTIONS = [o.name for o in config.OPTIONS if o.parse is config.BY_NAME["log_dir"].parse]


def test_string_options_are_the_expected_ones() -> None:
    assert {"log_dir", "state_dir", "json", "junit", "out_link", "installable", "fallback"} <= set(
        STRING_OPTIONS
    )


@pytest.mark.parametrize("key", STRING_OPTIONS)
def test_a_nul_in_a_string_option_names_file_and_line(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, f'quiet = true\n[jobs.x]\n{key} = "a\\u0000b"\n')
    with pytest.raises(ConfigError) as info:
        config.load({}, environ={}, cwd=tmp_path)
    assert f"{path}:3: {key}: must not contain a NUL character" in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("\u0663", "expected a whole number, got '\u0663'"),
        ("1_000", "expected a whole number, got '1_000'"),
        ("\u00b2", "expected a whole number"),
        ("9" * 5000, "(5000 characters) is too large a number"),
    ],
)
def test_whole_numbers_are_ascii_digits(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        config.whole_number(text)
    assert message in str(info.value)
    assert config.whole_number(" +0042 ") == 42 and config.whole_number(-3) == -3


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("NIXBUILD_CORES", "70000", "NIXBUILD_CORES: must be between 1 and 65536, got 70000"),
        ("NIXBUILD_MAX_JOBS", str(2**63), "NIXBUILD_MAX_JOBS: must be between 1 and 65536"),
        ("NIXBUILD_MAX_JOBS", "\u0663", "NIXBUILD_MAX_JOBS: expected a whole number"),
        ("NIXBUILD_MAX_DURATION", "9" * 5000 + "m", "(5001 characters) is too long a duration"),
        ("NIXBUILD_MIN_DISK", "\u0663G", "NIXBUILD_MIN_DISK: expected a size like 512M"),
    ],
)
def test_bad_env_numbers(tmp_path: Path, name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load({}, environ={name: value}, cwd=tmp_path)
    assert message in str(info.value)
    assert "int_max_str_digits" not in str(info.value)


def test_the_largest_parallelism_is_accepted(tmp_path: Path) -> None:
    write(tmp_path, "cores = 65536\n")
    cfg = config.load({"max_jobs": "65536"}, environ={}, cwd=tmp_path)
    assert (cfg["cores"], cfg["max_jobs"]) == (65536, 65536)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"cores = {10**26}\n", ":1: cores: must be between 1 and 65536"),
        ('json = "a\\u0000b"\n', ":1: json: must not contain a NUL character"),
        ('log_dir = "a\\u0000b"\n', ":1: log_dir: must not contain a NUL character"),
        (f"x = {'[' * 5000}{']' * 5000}\n", ": invalid TOML: arrays or tables nested too deeply"),
    ],
)
def test_a_bad_file_stops_a_build_before_anything_is_written(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    done = subprocess.run(
        [sys.executable, "-m", "nixbuild", "build", ".#x"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert f"nixbuild: error: {path}{message}" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nixbuild.toml"]


def test_unknown_job_lists_the_defined_ones(tmp_path: Path) -> None:
    write(tmp_path, TOML)
    with pytest.raises(ConfigError, match="unknown job 'pytorch'") as info:
        config.load({}, environ={}, cwd=tmp_path, job="pytorch")
    assert "defined jobs: torch" in str(info.value)


def test_bad_env_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NIXBUILD_CORES: expected a whole number"):
        config.load({}, environ={"NIXBUILD_CORES": "many"}, cwd=tmp_path)


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load({}, environ={}, cwd=tmp_path, config_path=str(tmp_path / "nope.toml"))


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_config_file_that_is_not_a_file_is_an_error_not_skipped(
    tmp_path: Path, kind: str
) -> None:
    """Skipping ./nixbuild.toml would silently apply the user's config.toml instead."""
    user = tmp_path / "xdg" / "nixbuild"
    user.mkdir(parents=True)
    (user / "config.toml").write_text("cores = 3\n")
    local = tmp_path / "nixbuild.toml"
    local.mkdir() if kind == "directory" else os.mkfifo(local)
    with pytest.raises(ConfigError, match=r"nixbuild.toml is not a regular file"):
        config.load({}, environ={"XDG_CONFIG_HOME": str(tmp_path / "xdg")}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("45s", 45),
        ("90m", 5400),
        ("2h30m", 9000),
        (120, 120),
        ("1h", 3600),
        ("0.5s", 0.5),
        ("1.5", 1.5),
        (0.25, 0.25),
        ("2m7.5s", 127.5),
        (" 0.17 s ", 0.17),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert config.parse_duration(text) == seconds
    assert config.parse_delay(text) == seconds


@pytest.mark.parametrize("text", [0, 0.0, "0", "0s", "0.0", "0.00s"])
def test_a_delay_may_be_zero_in_any_spelling_a_duration_may_not(text: object) -> None:
    assert config.parse_delay(text) == 0.0
    with pytest.raises(ValueError, match="must be positive"):
        config.parse_duration(text)


def test_fractional_seconds_in_a_file_and_in_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, 'network_backoff_cap = "0.75s"\noom_delay = 1.5\nheartbeat = "2.5"\n')
    env = {"HOME": str(tmp_path), "NIXBUILD_NETWORK_BACKOFF": "0.5s"}
    cfg = config.load({}, environ=env, cwd=tmp_path)
    assert cfg["network_backoff"] == 0.5
    assert cfg.sources["network_backoff"] == "NIXBUILD_NETWORK_BACKOFF"
    assert (cfg["network_backoff_cap"], cfg["oom_delay"], cfg["heartbeat"]) == (0.75, 1.5, 2.5)
    assert cfg.sources["oom_delay"] == str(path)


@pytest.mark.parametrize("value", ["0.5.5s", "-0.5s", "half a second", "1.5m"])
def test_a_bad_fractional_env_value_is_exit_2_with_a_message_not_a_traceback(
    tmp_path: Path, value: str
) -> None:
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "NIXBUILD_NETWORK_BACKOFF": value}
    done = subprocess.run(
        [sys.executable, "-m", "nixbuild", "config"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == ExitCode.USAGE
    assert "Traceback" not in done.stderr
    expected = (
        f"NIXBUILD_NETWORK_BACKOFF: expected a duration like 45s, 0.5s, 90m or 2h30m, got {value!r}"
    )
    assert expected in done.stderr
