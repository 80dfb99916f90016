"""What the person watching sees: log lines, a progress line, heartbeats, decisions.

On a terminal the progress line is redrawn in place under the scrolling log (like
``nix build -L``). Anywhere else (CI, journald, ``nohup``) there are no ANSI codes and no
redraws: plain lines, plus a heartbeat at most every ``heartbeat_s`` while nix is silent,
so a log reader can tell a long compile from a hang.
"""

from __future__ import annotations

import errno
import sys
import threading
from dataclasses import dataclass, field
from typing import TextIO

from .logevents import drv_name
from .logstream import LogState
from .model import Source

CLEAR_LINE = "\r\x1b[K"


def format_elapsed(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def progress_text(state: LogState, elapsed_s: float, prefix: str = "") -> str:
    builds = state.builds
    parts = [prefix] if prefix else []
    if builds.expected:
        parts.append(f"{builds.done}/{builds.expected} built")
    running = state.running_drvs()
    if running:
        drv = running[-1]
        phase = state.phase_of.get(drv)
        more = f" (+{len(running) - 1})" if len(running) > 1 else ""
        parts.append(f"building {drv_name(drv)}{more}" + (f" [{phase}]" if phase else ""))
    if builds.failed:
        parts.append(f"{builds.failed} failed")
    parts.append(format_elapsed(elapsed_s))
    return ", ".join(parts)


_GONE_ERRNOS = frozenset({errno.EIO, errno.EPIPE, errno.EBADF})


@dataclass
class Console:
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    tty: bool = False
    quiet: bool = False
    heartbeat_s: float = 30.0
    _progress_shown: bool = False
    _last_output: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _gone: bool = False  # the terminal went away: stop writing, the run goes on

    def _emit(self, raw: str) -> None:
        """Write and flush; a terminal that hung up (EIO) or a closed pipe (EPIPE) must not
        end the run: its record (summary, ledger, logs) is on disk, not on the screen."""
        if self._gone:
            return
        try:
            self.stream.write(raw)
            self.stream.flush()
        except ValueError:  # the stream was closed
            self._gone = True
        except OSError as exc:
            # Gone for good; anything else (EAGAIN from a full non-blocking pipe) costs
            # only this line.
            self._gone = exc.errno in _GONE_ERRNOS

    def _write(self, text: str) -> None:
        if self.tty and self._progress_shown:
            self._emit(CLEAR_LINE)
            self._progress_shown = False
        self._emit(text + "\n")

    def say(self, text: str, now: float) -> None:
        """A nixbuild message (attempt start, decision, result): always shown."""
        with self._lock:
            self._write(text)
            self._last_output = now

    def log_text(self, text: str, source: Source, now: float) -> None:
        if self.quiet and (source is not Source.NIX or not text.startswith(("error", "warning"))):
            return
        with self._lock:
            self._write(text)
            self._last_output = now

    def tick(self, state: LogState, elapsed_s: float, now: float, prefix: str = "") -> None:
        """Called about once a second by the supervisor while an attempt runs."""
        with self._lock:
            if self.tty:
                self._emit(CLEAR_LINE + progress_text(state, elapsed_s, prefix)[:200])
                self._progress_shown = True
            elif now - self._last_output >= self.heartbeat_s:
                self._write("… still running: " + progress_text(state, elapsed_s, prefix))
                self._last_output = now

    def start(self, now: float) -> None:
        self._last_output = now

    def done(self) -> None:
        with self._lock:
            if self.tty and self._progress_shown:
                self._emit(CLEAR_LINE)
                self._progress_shown = False
