"""A run's directory: command lines, attempt logs, structured events, summary.json.

Layout::

    <log-dir>/<run-id>/command.txt      the exact nix command line of every attempt
    <log-dir>/<run-id>/attempt-N.log    the complete human-readable log of attempt N
    <log-dir>/<run-id>/events.jsonl     structured events (structlog, one JSON object a line)
    <log-dir>/<run-id>/summary.json     written atomically at the end

A full disk under the log dir must not kill a build that is going well: write errors are
reported once and the files are then left alone, while the build and the console go on.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import structlog

from .errors import UsageError


def new_run_id(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"


def create_run_dir(log_dir: Path, run_id: str) -> Path:
    """Create the run directory or fail with a message that says what to do (exit 2)."""
    run_dir = log_dir / run_id
    probe = run_dir / ".write-test"
    made_log_dir = not log_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        # Nothing half-made stays behind: the probe, the run directory, a log dir made now.
        with contextlib.suppress(OSError):
            probe.unlink()
        with contextlib.suppress(OSError):
            run_dir.rmdir()
        if made_log_dir:
            with contextlib.suppress(OSError):
                log_dir.rmdir()
        raise UsageError(
            f"cannot write run logs under {log_dir}: {exc.strerror or exc}",
            hint="choose a writable directory with --log-dir DIR or NIXBUILD_LOG_DIR",
        ) from None
    return run_dir


_PATH_MAX = 4096  # Linux's limit on a path handed to the kernel, terminating NUL included
_NAME_MAX = 255  # and on one name in it, on every common Linux file system


def check_name_length(path: Path, option: str) -> None:
    """Refuse a path the kernel would refuse (ENAMETOOLONG), before any work is done."""
    longest = max((len(os.fsencode(part)) for part in path.parts), default=0)
    if longest > _NAME_MAX or len(os.fsencode(path)) >= _PATH_MAX:
        raise UsageError(
            f"{option} {str(path)[:80]}…: too long a name "
            f"(at most {_NAME_MAX} bytes a name, {_PATH_MAX - 1} in all)"
        )


def _new_file_mode() -> int:
    """0o666 less the umask: what open() would have given (mkstemp always gives 0o600)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:  # noqa: PTH123
            umask = next(int(ln.split()[1], 8) for ln in status if ln.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = 0o022
    return 0o666 & ~umask


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a file.

    The file gets the mode a plain write would give it: an existing file's own, else
    0o666 less the umask (a CI job's report is read by the steps that upload it).
    """
    # A short temporary name: one made from the target's would be too long for a target
    # whose own name is near the file system's limit (255 bytes).
    fd, tmp = tempfile.mkstemp(prefix=".nixbuild-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            try:
                mode = path.stat().st_mode & 0o7777
            except OSError:
                mode = _new_file_mode()
            os.fchmod(fh.fileno(), mode)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise


def write_json_atomic(path: Path, data: object) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


class RunFiles:
    """Owns the open files of one run; every write is failure-tolerant."""

    def __init__(
        self, run_dir: Path, warn: Callable[[str], None], journal: TextIO | None = None
    ) -> None:
        """``journal``: a stream that also gets every event as a JSON line (under systemd,
        stderr is the journal, so `journalctl -o cat` shows the structured events)."""
        self.dir = run_dir
        self._warn = warn
        self._broken = False
        self._attempt_log: TextIO | None = None
        self._events: TextIO | None = self._open("events.jsonl")
        self._journal = journal
        self.events = structlog.wrap_logger(
            self,
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(sort_keys=False),
            ],
        )

    def info(self, rendered: str) -> None:
        """structlog's sink: the events file (while writable) and the journal stream."""
        events = self._events
        if events is not None and not self._broken:
            self._safe(lambda: (events.write(rendered + "\n"), events.flush()))
        if self._journal is not None:
            with contextlib.suppress(OSError, ValueError):
                self._journal.write(rendered + "\n")
                self._journal.flush()

    def _open(self, name: str) -> TextIO | None:
        try:
            return (self.dir / name).open("a", encoding="utf-8", errors="replace")
        except OSError as exc:
            self._fail(exc)
            return None

    def _fail(self, exc: OSError) -> None:
        if not self._broken:
            self._broken = True
            self._warn(
                f"warning: cannot write run logs in {self.dir} ({exc.strerror or exc}); "
                "the build goes on, logged to the console only"
            )

    def _safe(self, action: Callable[[], object]) -> None:
        if self._broken:
            return
        try:
            action()
        except OSError as exc:
            self._fail(exc)

    def event(self, name: str, **fields: Any) -> None:
        self.events.info(name, **fields)

    def add_command(self, number: int, argv: Sequence[str]) -> None:
        def write() -> None:
            with (self.dir / "command.txt").open("a", encoding="utf-8") as fh:
                fh.write(f"# attempt {number}\n{shlex.join(argv)}\n")

        self._safe(write)

    def open_attempt(self, number: int) -> str:
        name = f"attempt-{number}.log"
        self.close_attempt()
        self._attempt_log = self._open(name)
        return name

    def attempt_line(self, text: str) -> None:
        # Called for every log line: the same guard as _safe, without a closure per line.
        log = self._attempt_log
        if log is None or self._broken:
            return
        try:
            log.write(text + "\n")
        except OSError as exc:
            self._fail(exc)

    def close_attempt(self) -> None:
        if self._attempt_log is not None:
            with contextlib.suppress(OSError):
                self._attempt_log.close()
            self._attempt_log = None

    def write_summary(self, summary: dict[str, object]) -> None:
        """The summary matters most: a failure to write it is always said, by name."""
        try:
            write_json_atomic(self.dir / "summary.json", summary)
        except OSError as exc:
            self._warn(
                f"warning: could not write {self.dir / 'summary.json'}: {exc.strerror or exc}"
            )

    def close(self) -> None:
        self.close_attempt()
        if self._events is not None:
            with contextlib.suppress(OSError):
                self._events.close()
