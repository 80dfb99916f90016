"""Effective configuration: flags > environment (NIXBUILD_*) > TOML file > defaults.

Every value remembers where it came from, so ``nixbuild config`` can explain itself. The
file is ``--config PATH``, else ``./nixbuild.toml``, else
``$XDG_CONFIG_HOME/nixbuild/config.toml``. Top-level keys are defaults for every run;
``[jobs.NAME]`` tables describe named jobs (``--job NAME``) and override the top level.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

Parser = Callable[[object], object]


# cores and max-jobs: far above any machine's CPU count, far below what nix (2^63-1) and
# SQLite's INTEGER (the ledger stores them) accept.
MAX_PARALLELISM = 65536
_INT64_MAX = 2**63 - 1  # what the ledger can store: the ceiling of every other whole number

# int() also reads '٣' (Arabic-Indic), '1_000' and, above 4300 digits, fails with a message
# about Python: a number here is ASCII digits, and a few dozen of them at most.
_WHOLE = re.compile(r"\s*([+-]?)0*([0-9]+)\s*", re.ASCII)
_MAX_DIGITS = 30


def shown(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut short: a value of thousands of digits still makes a short message."""
    if isinstance(value, int) and value.bit_length() > 128:  # str() of 4300+ digits fails
        return f"a number of about {int(value.bit_length() * math.log10(2))} digits"
    text = repr(value)
    if len(text) <= limit:
        return text
    quote = text[0] if text[0] in "'\"" else ""
    return f"{text[:limit]}…{quote} ({len(text) - 2 * len(quote)} characters)"


def is_whole_number(text: str) -> bool:
    """True for an optionally signed run of ASCII digits (not '٣', not '1_000', not '1.0')."""
    return _WHOLE.fullmatch(text) is not None


def whole_number(value: object) -> int:
    """An int, or a string of ASCII digits, as an int; ValueError otherwise or when huge."""
    if isinstance(value, bool):
        raise ValueError("expected a whole number, not true/false")
    if isinstance(value, int):
        return value
    match = _WHOLE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a whole number, got {shown(value)}")
    sign, digits = match.groups()
    if len(digits) > _MAX_DIGITS:
        raise ValueError(f"{shown(value)} is too large a number")
    return int(sign + digits)


def _int_at_least(minimum: int, maximum: int | None = None) -> Parser:
    def parse(value: object) -> int:
        number = whole_number(value)
        if maximum is not None and not minimum <= number <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum}, got {shown(number)}")
        if number < minimum:
            raise ValueError(f"must be at least {minimum}, got {shown(number)}")
        if number > _INT64_MAX:
            raise ValueError(f"{shown(number)} is too large a number")
        return number

    return parse


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _str(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {shown(value)}")
    if "\0" in value:  # a path or an argument with one fails only when used, maybe mid-run
        raise ValueError(f"must not contain a NUL character (\\u0000), got {shown(value)}")
    return value


def _choice(*choices: str) -> Parser:
    def parse(value: object) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return parse


# Hours and minutes are whole; seconds may have a fraction (``0.5s``, ``2m7.5s``).
# re.ASCII: \d would otherwise match '٣' and the like, which int() then reads as 3.
_DURATION = re.compile(
    r"^\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m(?:in)?)?\s*(?:(\d+(?:\.\d+)?)\s*s?)?\s*$", re.ASCII
)


def _seconds(value: object, *, zero_ok: bool) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"expected a finite number of seconds, got {value}")
        try:
            seconds = float(value)
        except OverflowError:  # an int from a file, too large for a float
            seconds = math.inf
    else:
        match = _DURATION.match(str(value))
        if not match or not any(match.groups()):
            raise ValueError(
                f"expected a duration like 45s, 0.5s, 90m or 2h30m, got {shown(value)}"
            )
        hours, minutes, secs = match.groups()
        if max(len(hours or ""), len(minutes or "")) > _MAX_DIGITS:  # int() refuses 4300+
            seconds = math.inf
        else:
            seconds = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0)
    if not math.isfinite(seconds):  # float("1" + "0" * 400) is inf, not an error
        raise ValueError(f"{shown(value)} is too long a duration")
    if seconds < 0 or (seconds == 0 and not zero_ok):
        raise ValueError(f"must be {'zero or more' if zero_ok else 'positive'}, got {value!r}")
    return seconds


def parse_duration(value: object) -> float:
    """``90`` or ``0.25`` (seconds), ``"45s"``, ``"0.5s"``, ``"1.5"``, ``"90m"``, ``"2h30m"``
    → seconds; zero and less are refused."""
    return _seconds(value, zero_ok=False)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE | re.ASCII)


def parse_size(value: object) -> int:
    """``536870912``, ``"512M"``, ``"20G"``, ``"1.5GiB"`` → bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"must not be negative, got {shown(value)}")
        size: float = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"expected a size like 512M or 20G, got {shown(value)}")
        number, unit = float(match.group(1)), match.group(2).upper()
        size = number * 1024 ** "_KMGT".index(unit or "_")
    if not size <= _INT64_MAX:  # also inf: float("1" + "0" * 400) is not an error
        raise ValueError(f"{shown(value)} is too large a size")
    return int(size)


def parse_delay(value: object) -> float:
    """Like ``parse_duration`` but zero (``0``, ``"0s"``) is allowed: no wait at all."""
    return _seconds(value, zero_ok=True)


def _deadline(value: object) -> str:
    text = str(value)
    if not re.fullmatch(r"([01]?[0-9]|2[0-3]):[0-5][0-9]", text):
        raise ValueError(f"expected a time of day HH:MM, got {shown(value)}")
    return text


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    parse: Parser
    default: object
    help: str


# One table drives the file keys, the env names and `nixbuild config`.
OPTIONS: tuple[Option, ...] = (
    Option("installable", _str, None, "what to build (default .#default)"),
    Option("mode", _choice("build", "develop"), "build", "nix build or nix develop"),
    Option(
        "cores",
        _int_at_least(1, MAX_PARALLELISM),
        None,
        "nix `cores` (default min(8, usable CPUs))",
    ),
    Option("max_jobs", _int_at_least(1, MAX_PARALLELISM), 1, "nix `max-jobs`"),
    Option("fallback", _str, None, "prebuilt variant to fall back to"),
    Option("no_fallback", _bool, False, "never fall back to a -bin variant"),
    Option("max_attempts", _int_at_least(1), 6, "attempts in all, fallback included"),
    Option("deadline", _deadline, None, "no attempt runs past this time of day (HH:MM)"),
    Option("max_duration", parse_duration, None, "stop the run after this long"),
    Option("gc", _bool, False, "garbage-collect the store when the disk is full"),
    Option("log_dir", _str, "logs", "where run directories go"),
    Option("state_dir", _str, None, "ledger, locks, dev-shell profiles"),
    Option("out_link", _str, None, "GC root for the result (build: ./result)"),
    Option("quiet", _bool, False, "only progress and the result"),
    Option("heartbeat", parse_duration, 30.0, "seconds between heartbeat lines when silent"),
    Option("stall_timeout", parse_duration, None, "stop an attempt silent for this long"),
    Option("grace", parse_duration, 10.0, "seconds between TERM and KILL when stopping nix"),
    Option(
        "variant",
        _choice("auto", "source", "bin"),
        "source",
        "preflight choice: source, bin (the -bin fallback), or auto (decided by the machine)",
    ),
    Option(
        "network_backoff",
        parse_delay,
        2.0,
        "first network retry window; each next one is 4 times wider, up to the cap",
    ),
    Option("network_backoff_cap", parse_delay, 600.0, "widest network retry window"),
    Option("network_retries", _int_at_least(0), 5, "network retries per variant"),
    Option("settle_delay", parse_delay, 5.0, "pause before retrying a build or timeout failure"),
    Option(
        "oom_delay",
        parse_delay,
        45.0,
        "longest pause after out-of-memory (the retry starts once memory is back)",
    ),
    Option("unknown_stops", _bool, True, "stop on an unrecognised failure (else treat as build)"),
    Option("watchdog", _bool, True, "stop the build before the kernel's OOM killer does"),
    Option(
        "min_free_memory", parse_size, None, "watchdog threshold (default max(256M, 3% of memory))"
    ),
    Option("on_success", _str, None, "shell command run when the run succeeds"),
    Option("on_failure", _str, None, "shell command run when the run fails"),
    Option("min_memory", parse_size, 16 * 1024**3, "memory the advice asks for (preflight)"),
    Option("min_disk", parse_size, 20 * 1024**3, "free disk the advice asks for (preflight)"),
    Option("min_cores", _int_at_least(1), 4, "cores the advice asks for (preflight)"),
    Option("json", _str, None, "write the run summary as JSON to this file"),
    Option("junit", _str, None, "write a JUnit XML report to this file"),
    Option(
        "ci_format",
        _choice("github", "gitlab", "buildkite", "plain"),
        None,
        "CI output flavour (default: detected from the environment)",
    ),
    Option("fail_on_fallback", _bool, False, "exit 1 when only the -bin fallback was built"),
    Option("keep_runs", _int_at_least(1), 60, "run directories kept in the log dir"),
    Option("keep_size", parse_size, 10 * 1024**3, "total size of run directories kept"),
)
BY_NAME = {opt.name: opt for opt in OPTIONS}


@dataclass(frozen=True, slots=True)
class Config:
    values: Mapping[str, Any]
    sources: Mapping[str, str]
    file: Path | None = None
    job: str | None = None
    jobs: tuple[str, ...] = field(default=())

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def get_path(self, name: str) -> Path | None:
        value = self.values.get(name)
        return None if value is None else Path(value).expanduser()


def default_state_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "~")) / ".local/state")
    return Path(base).expanduser() / "nixbuild"


def find_config_file(explicit: str | None, environ: Mapping[str, str], cwd: Path) -> Path | None:
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist or is not a file")
        return path
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")) / ".config")
    for candidate in (cwd / "nixbuild.toml", Path(base).expanduser() / "nixbuild" / "config.toml"):
        if candidate.is_file():
            return candidate
        if candidate.exists():  # silently reading the next one would use the wrong settings
            raise ConfigError(f"config file {candidate} is not a regular file")
    return None


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^[ \t]*{re.escape(key)}[ \t]*=", re.MULTILINE)
    match = pattern.search(text)
    return None if match is None else text.count("\n", 0, match.start()) + 1


def _where(path: Path, text: str, key: str) -> str:
    line = _line_of(text, key)
    return f"{path}:{line}" if line else str(path)


def _parse_table(
    table: Mapping[str, object], path: Path, text: str, scope: str
) -> dict[str, object]:
    parsed: dict[str, object] = {}
    for key, value in table.items():
        opt = BY_NAME.get(key.replace("-", "_"))
        if opt is None:
            known = ", ".join(sorted(BY_NAME))
            raise ConfigError(
                f"{_where(path, text, key)}: unknown key {key!r} in {scope}",
                hint=f"known keys: {known}",
            )
        try:
            parsed[opt.name] = opt.parse(value)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ConfigError(f"{_where(path, text, key)}: {key}: {exc}") from None
    return parsed


def read_config_file(path: Path) -> tuple[dict[str, object], dict[str, dict[str, object]]]:
    """→ (top-level values, jobs). Errors name the file, the line and the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError(f"{path}: invalid TOML: arrays or tables nested too deeply") from None
    except ValueError:  # int() refuses an integer of more than 4300 digits
        raise ConfigError(f"{path}: invalid TOML: a number is too large") from None
    jobs_table = data.pop("jobs", {})
    if not isinstance(jobs_table, dict):
        raise ConfigError(f"{_where(path, text, 'jobs')}: `jobs` must be a table of [jobs.NAME]")
    top = _parse_table(data, path, text, "the top level")
    jobs: dict[str, dict[str, object]] = {}
    for name, table in jobs_table.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [jobs.{name}] must be a table")
        jobs[name] = _parse_table(table, path, text, f"[jobs.{name}]")
    return top, jobs


def load(
    flags: Mapping[str, object | None],
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    config_path: str | None = None,
    job: str | None = None,
) -> Config:
    """Resolve every option. ``flags`` holds command-line values (None = not given)."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    path = find_config_file(config_path or environ.get("NIXBUILD_CONFIG"), environ, cwd)
    top, jobs = read_config_file(path) if path else ({}, {})
    job = job or environ.get("NIXBUILD_JOB") or None
    if job is not None and job not in jobs:
        where = f"in {path}" if path else "(no config file found)"
        known = ", ".join(sorted(jobs)) or "none"
        raise ConfigError(f"unknown job {job!r} {where}", hint=f"defined jobs: {known}")
    job_values = jobs.get(job, {}) if job else {}

    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for opt in OPTIONS:
        env_name = "NIXBUILD_" + opt.name.upper()
        flag = flags.get(opt.name)
        if flag is not None:
            values[opt.name], sources[opt.name] = _checked(
                opt, flag, "--" + opt.name.replace("_", "-")
            )
        elif environ.get(env_name, "") != "":
            values[opt.name], sources[opt.name] = _checked(opt, environ[env_name], env_name)
        elif opt.name in job_values:
            values[opt.name], sources[opt.name] = job_values[opt.name], f"{path} [jobs.{job}]"
        elif opt.name in top:
            values[opt.name], sources[opt.name] = top[opt.name], str(path)
        else:
            values[opt.name], sources[opt.name] = opt.default, "default"
    return Config(values, sources, path, job, tuple(sorted(jobs)))


def _checked(opt: Option, raw: object, origin: str) -> tuple[object, str]:
    try:
        return opt.parse(raw), origin
    except (ValueError, TypeError, OverflowError) as exc:
        raise ConfigError(f"{origin}: {exc}") from None
