"""The one module that starts processes (through ``sh``).

Two shapes:

* ``run_capture`` for short commands whose whole output is small (``nix --version``,
  ``nix eval``, ``systemctl --user …``).
* ``Supervised`` for a build: the child gets its own session (so its whole process group
  can be signalled, and a terminal's Ctrl-C reaches only us), its stdout and stderr are
  handed to callbacks line by line as they arrive, and ``stop`` tears the group down
  TERM → grace period → KILL so no builder outlives nixbuild.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sh

from .errors import NixbuildError

LineCallback = Callable[[str], None]

_PR_SET_PDEATHSIG = 1


class CommandNotFound(NixbuildError):
    """The program to run is not on PATH (the caller decides which exit code that means)."""


@dataclass(frozen=True, slots=True)
class Completed:
    argv: tuple[str, ...]
    status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.status == 0


def _command(argv: Sequence[str]) -> Any:
    if not argv:
        raise ValueError("empty command line")
    try:
        return sh.Command(argv[0])
    except sh.CommandNotFound as exc:
        raise CommandNotFound(f"{argv[0]}: command not found") from exc


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if nixbuild dies, even from SIGKILL.

    SIGTERM, not SIGKILL: nix runs each builder in a session of its own, out of reach of
    our process-group signals, and only nix itself can stop them; on SIGTERM it does (seen
    with Nix 2.8: a SIGKILLed nixbuild then leaves no builder behind), while a SIGKILLed
    nix orphans them. Linux-only (prctl); elsewhere ``stop`` remains the only guard.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _common_kwargs(
    env: Mapping[str, str] | None, cwd: str | os.PathLike[str] | None
) -> dict[str, Any]:
    """How every child starts: any exit status is ours to judge, output through pipes and
    decoded leniently, its own session (group signals, no terminal Ctrl-C), and SIGTERM
    when nixbuild dies."""
    kwargs: dict[str, Any] = {
        "_ok_code": list(range(256)),
        "_tty_out": False,
        "_decode_errors": "replace",
        "_env": dict(os.environ if env is None else env),
        "_new_session": True,
        "_preexec_fn": _die_with_parent,
    }
    if cwd is not None:
        kwargs["_cwd"] = str(cwd)
    return kwargs


def run_capture(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    stdin: str | None = None,
) -> Completed:
    """Run a short command to completion and return its status and decoded output.

    The timeout is our own timer, not sh's ``_timeout``: sh watches its timeout in a thread
    that wakes every 0.1 s, so every ``_timeout`` call lasted at least 0.1 s (measured:
    0.105 s for a 0.01 s ``nix --version``), and a build starts after several such calls.
    """
    cmd = _command(argv)
    kwargs = _common_kwargs(env, cwd)
    if stdin is not None:
        kwargs["_in"] = stdin
    running = cmd(*argv[1:], _bg=True, _bg_exc=False, _return_cmd=True, **kwargs)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        with contextlib.suppress(OSError):
            running.signal_group(signal.SIGKILL)

    timer = None if timeout is None else threading.Timer(timeout, kill)
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        running.wait()
        status = running.exit_code
    except sh.SignalException as exc:
        status = 128 + abs(exc.exit_code)
    finally:
        if timer is not None:
            timer.cancel()
    if timed_out.is_set():
        raise NixbuildError(f"{argv[0]} did not finish within {timeout} s")
    return Completed(tuple(argv), status, _text(running.stdout), _text(running.stderr))


def _text(data: bytes | str) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


class Supervised:
    """A long-running child in its own session, with line callbacks and group teardown."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        on_stdout: LineCallback,
        on_stderr: LineCallback,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.argv = tuple(argv)
        cmd = _command(argv)
        kwargs = _common_kwargs(env, cwd)
        # ``_in=""``: the child's stdin is at end of file. Without it sh gives a child with
        # output callbacks a stdin fed from a queue that its input thread polls every
        # 0.1 s, so every attempt ended 0.1 s late; a build never reads stdin anyway.
        kwargs.update(
            _bg=True,
            _bg_exc=False,
            _in="",
            _out=_line_sink(on_stdout),
            _err=_line_sink(on_stderr),
        )
        self._running = cmd(*argv[1:], **kwargs)
        self.pid: int = self._running.pid
        self._stopping = threading.Lock()
        # sh's ``wait(timeout=…)`` polls every 0.1 s, so each watchdog tick and the end of
        # every build paid up to 0.1 s; one thread blocks in sh's untimed wait (which also
        # waits for the output threads, so every line was delivered) and sets an event.
        self._exited = threading.Event()
        threading.Thread(target=self._reap, name="nixbuild-reap", daemon=True).start()

    def _reap(self) -> None:
        try:
            self._running.wait()
        except sh.ErrorReturnCode:
            pass  # a signal death; the exit code is read from the process below
        finally:
            self._exited.set()

    def wait(self, timeout: float | None = None) -> tuple[int | None, int | None]:
        """Wait for the child; return (exit status, terminating signal). (None, None) on timeout."""
        if not self._exited.wait(timeout):
            return None, None
        code = self._running.exit_code
        if code is not None and code < 0:
            return None, -code
        return code, None

    def alive(self) -> bool:
        return bool(self._running.is_alive())

    def stop(self, grace_s: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """Signal the whole process group, wait up to ``grace_s``, then SIGKILL the group."""
        with self._stopping:
            _signal_group(self.pid, sig)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline:
                if not self.alive() and not _group_exists(self.pid):
                    return
                time.sleep(0.05)
            _signal_group(self.pid, signal.SIGKILL)
            self.wait(timeout=5)


def _line_sink(callback: LineCallback) -> Callable[[str], None]:
    def sink(chunk: str) -> None:
        # sh delivers line-buffered chunks; strip only the line terminator.
        callback(chunk.rstrip("\r\n") if chunk.endswith("\n") else chunk)

    return sink


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
