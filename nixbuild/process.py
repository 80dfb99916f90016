"""The one module that starts processes (through ``sh``).

Two shapes:

* ``run_capture`` for short commands whose whole output is small (``nix --version``,
  ``nix eval``, ``systemctl --user …``).
* ``Supervised`` for a build: the child gets its own session (so its whole process group
  can be signalled, and a terminal's Ctrl-C reaches only us), its stdout and stderr go to
  pipes of our own whose whole lines are handed to callbacks in batches as they arrive,
  and ``stop`` tears the group down TERM → grace period → KILL so no builder outlives
  nixbuild.

sh starts every process; nothing here waits on a polling loop of sh's (its timeouts, its
stdin queue and its timed waits each poll every 0.1 s, which once made every command and
every attempt 0.1 s longer).
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import fcntl
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
LinesCallback = Callable[[list[str]], None]

# The pipes a supervised child writes to: one read per wake-up of up to this much, a pipe
# big enough to hold a flood's output while the reader pauses between small reads.
_READ_SIZE = 1 << 20
_PIPE_SIZE = 1 << 20
_SMALL_READ = 16 * 1024
_BATCH_PAUSE_S = 0.002
# After the child exits, how long its output may still arrive (a grandchild holding the
# pipe open must not hang us; sh waits the same 2 s).
_DRAIN_GRACE_S = 2.0

_PR_SET_PDEATHSIG = 1


class CommandNotFound(NixbuildError):
    """The program to run is not on PATH, or exec refused it (not executable, not a program
    for this machine); the caller decides which exit code that means."""


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


def _start(cmd: Any, argv: Sequence[str], kwargs: dict[str, Any]) -> Any:
    """Start ``argv`` with sh; an exec failure in the child becomes ``CommandNotFound``."""
    try:
        return cmd(*argv[1:], **kwargs)
    except sh.ForkException as exc:
        # sh hands the child's exec error over as the text of its traceback: the last
        # line says why (``OSError: [Errno 8] Exec format error: b'/…/nix'``). sh leaves
        # the pipes it made for that child open (3-5 fds, measured); a run that cannot start
        # nix ends within max_attempts, so that stays bounded.
        lines = str(exc).strip().splitlines()
        reason = lines[-1].strip() if lines else "exec failed"
        raise CommandNotFound(f"{argv[0]} cannot be started: {reason}") from None


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
    running = _start(cmd, argv, {**kwargs, "_bg": True, "_bg_exc": False, "_return_cmd": True})
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
        on_stdout: LinesCallback,
        on_stderr: LinesCallback,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.argv = tuple(argv)
        cmd = _command(argv)
        kwargs = _common_kwargs(env, cwd)
        # sh starts the child, but its output goes to pipes of our own: sh's readers hand
        # output over line by line (several µs of Python per line, on the thread that must
        # keep nix's pipe drained) and can only batch in fixed-size blocks that would hold
        # a slow build's lines back. ``_in=""``: stdin is at end of file (a build never
        # reads it; sh's default stdin queue is polled every 0.1 s and delayed every exit).
        out_read, out_write = _pipe()
        err_read, err_write = _pipe()
        self.pipe_capacity_bytes = min(_pipe_size(out_read), _pipe_size(err_read))
        # The largest read: what had piled up in a pipe since the read before. Below the
        # capacity, the child never found a pipe full, so it never waited for nixbuild.
        self.pipe_peak_bytes = 0
        try:
            kwargs.update(_bg=True, _bg_exc=False, _in="", _out=out_write, _err=err_write)
            self._running = _start(cmd, argv, kwargs)
        except BaseException:
            for fd in (out_read, err_read):
                os.close(fd)
            raise
        finally:
            for fd in (out_write, err_write):
                os.close(fd)  # the child has its copies: EOF comes when it (and its own) exit
        self.pid: int = self._running.pid
        self._stopping = threading.Lock()
        self._drained = threading.Event()
        self._errors: list[BaseException] = []
        self._pumps = [
            threading.Thread(
                target=_pump,
                args=(fd, deliver, self._drained, self._errors, self._saw_read),
                name=f"pump-{name}",
                daemon=True,
            )
            for fd, deliver, name in ((out_read, on_stdout, "out"), (err_read, on_stderr, "err"))
        ]
        for pump in self._pumps:
            pump.start()
        # sh's ``wait(timeout=…)`` polls every 0.1 s, so each watchdog tick and the end of
        # every build paid up to 0.1 s; one thread blocks in sh's untimed wait, then joins
        # the pumps (so every line was delivered) and sets an event.
        self._exited = threading.Event()
        threading.Thread(target=self._reap, name="nixbuild-reap", daemon=True).start()

    def _saw_read(self, size: int) -> None:
        self.pipe_peak_bytes = max(self.pipe_peak_bytes, size)

    def _reap(self) -> None:
        try:
            self._running.wait()
        except sh.ErrorReturnCode:
            pass  # a signal death; the exit code is read from the process below
        finally:
            deadline = time.monotonic() + _DRAIN_GRACE_S
            for pump in self._pumps:
                pump.join(max(0.0, deadline - time.monotonic()))
            self._drained.set()  # a pump still blocked on a pipe held open delivers no more
            self._exited.set()

    def wait(self, timeout: float | None = None) -> tuple[int | None, int | None]:
        """Wait for the child; return (exit status, terminating signal). (None, None) on timeout.

        An exception raised by an output callback is raised here, once the child has exited.
        """
        if not self._exited.wait(timeout):
            return None, None
        if self._errors:
            raise self._errors[0]
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


def each_line(callback: LineCallback) -> LinesCallback:
    """A batch callback for ``Supervised`` that hands each line to ``callback``."""

    def deliver(lines: list[str]) -> None:
        for line in lines:
            callback(line)

    return deliver


def _pipe() -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError, AttributeError):  # F_SETPIPE_SZ: Linux, ≤ pipe-max-size
        fcntl.fcntl(read_fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    return read_fd, write_fd


def _pipe_size(fd: int) -> int:
    try:
        return int(fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ))
    except (OSError, AttributeError):
        return 64 * 1024  # Linux's default; elsewhere only an estimate


def _hand_over(deliver: LinesCallback, lines: list[str], errors: list[BaseException]) -> None:
    # A consumer that raised gets nothing more, but the pipe is still drained: a pump that
    # stopped reading would leave nix blocked on a full pipe for ever.
    if errors:
        return
    try:
        deliver(lines)
    except Exception as exc:  # re-raised by Supervised.wait
        errors.append(exc)


def _pump(
    fd: int,
    deliver: LinesCallback,
    stop: threading.Event,
    errors: list[BaseException],
    saw_read: Callable[[int], None],
) -> None:
    """Read a child's pipe until end of file, handing over whole lines in batches.

    A builder that prints as fast as it can writes one line per write; reading each as it
    comes would wake this thread for every line. After a small read the pump pauses for
    2 ms so the next read takes what arrived meanwhile (the 1 MiB pipe holds far more
    than 2 ms of any builder's output): a few hundred wake-ups a second at most, never a
    blocked writer. Undecodable bytes become U+FFFD; a final line without a newline is
    delivered at the end.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending = ""
    try:
        while not stop.is_set():
            chunk = os.read(fd, _READ_SIZE)
            if not chunk:
                break
            saw_read(len(chunk))
            lines = (pending + decoder.decode(chunk)).split("\n")
            pending = lines.pop()
            if lines:
                _hand_over(
                    deliver,
                    [line.rstrip("\r") for line in lines] if b"\r" in chunk else lines,
                    errors,
                )
            if len(chunk) < _SMALL_READ:
                time.sleep(_BATCH_PAUSE_S)
        pending += decoder.decode(b"", final=True)
        if pending and not stop.is_set():
            _hand_over(deliver, [pending.rstrip("\r")], errors)
    except OSError:
        pass  # the pipe went away: nothing more to read
    finally:
        os.close(fd)


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
