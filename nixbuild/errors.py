"""One error hierarchy and the exit-code contract.

Errors are raised deep and turned into an exit code only in the CLI ("raise deep, exit at
the edge"). The numbers are a documented contract (README "Exit codes"); tests pin them.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1  # deterministic failure after the policy ran out
    USAGE = 2  # usage or configuration error
    REFUSED = 3  # preflight refused: nix missing, not enough memory or disk
    TRANSIENT = 75  # transient failures exhausted the retries (EX_TEMPFAIL): CI may retry
    SIGHUP = 129  # the terminal went away (an ssh session dropped)
    SIGINT = 130
    SIGTERM = 143


# The way out of an unusable state directory (locks, ledger), said by both.
STATE_DIR_HINT = "set NIXBUILD_STATE_DIR or state_dir to a writable directory"


class NixbuildError(Exception):
    """Base class: a message for the user and the exit code it maps to."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n  hint: {self.hint}"


class UsageError(NixbuildError):
    exit_code = ExitCode.USAGE


class ConfigError(NixbuildError):
    exit_code = ExitCode.USAGE


class NixMissingError(NixbuildError):
    exit_code = ExitCode.REFUSED


class PreflightRefused(NixbuildError):
    exit_code = ExitCode.REFUSED
