"""Configuration precedence (flags > env > file > defaults), sources, and clear errors."""

from __future__ import annotations

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
        ("cores = 0\n", ":1: cores: must be at least 1"),
        ('\n\nmode = "shell"\n', ":3: mode: expected one of build, develop"),
        ("corse = 4\n", ":1: unknown key 'corse'"),
        ('[jobs.x]\ndeadline = "25:00"\n', ":2: deadline: expected a time of day"),
        ("jobs = 3\n", "`jobs` must be a table"),
        ('max_duration = "soon"\n', "expected a duration"),
    ],
)
def test_invalid_files_name_file_line_and_problem(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load({}, environ={}, cwd=tmp_path)
    assert str(path) in str(info.value) and message in str(info.value)
    assert info.value.exit_code == ExitCode.USAGE


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


@pytest.mark.parametrize(
    ("text", "seconds"), [("45s", 45), ("90m", 5400), ("2h30m", 9000), (120, 120), ("1h", 3600)]
)
def test_durations(text: object, seconds: float) -> None:
    assert config.parse_duration(text) == seconds
