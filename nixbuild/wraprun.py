"""`nixbuild run -- <nix command line>`: supervise the user's own command as written.

wrapcmd.py parses and rebuilds the command line (pure); this module adapts it to the
supervisor: which mode, where success can be read from, the argv of each attempt, and for
``nix develop … --command CMD`` the one run of CMD after the shell has been built, so a
failing test suite is reported as itself, never retried as if it were a build failure.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .console import Console
from .errors import ExitCode
from .model import AttemptSpec, Mode
from .outlink import checked_out_link
from .process import CommandNotFound, Supervised, each_line
from .wrapcmd import WrapMode, WrappedCommand


def wrap_mode(wrapped: WrappedCommand) -> Mode:
    return Mode.DEVELOP if wrapped.mode is WrapMode.DEVELOP else Mode.BUILD


def wrap_gcroot(wrapped: WrappedCommand) -> Path | None:
    """Where the result link will be, so success is read from the store; None if none."""
    if wrapped.mode is WrapMode.DEVELOP or wrapped.no_link:
        return None
    return checked_out_link(Path(wrapped.out_link or "result"))


def wrap_argv(wrapped: WrappedCommand) -> Callable[[AttemptSpec], Sequence[str]]:
    def argv(spec: AttemptSpec) -> Sequence[str]:
        return wrapped.realise_argv(cores=spec.cores, max_jobs=spec.max_jobs)

    return argv


def run_wrapped_command(
    wrapped: WrappedCommand, say: Callable[[str], None], interrupted: Callable[[], int | None]
) -> int:
    """After a supervised `nix develop`: run the user's original command once, as written.

    ``interrupted`` tells whether nixbuild got SIGINT/SIGTERM meanwhile: the command runs in
    a session of its own (like nix), so the signal must be passed on by stopping it.
    """
    if wrapped.mode is not WrapMode.DEVELOP or not wrapped.develop_command:
        return int(ExitCode.OK)
    say(f"nixbuild: the dev shell is built; running {' '.join(wrapped.develop_command)} in it")
    # Plain consoles: the command's lines as they come, and a terminal that is gone (EIO
    # under nohup, EPIPE) stops the echo, not the command.
    stdout, stderr = Console(sys.stdout), Console(sys.stderr)
    try:
        proc = Supervised(
            wrapped.original,
            on_stdout=each_line(lambda line: stdout.say(line, 0.0)),
            on_stderr=each_line(lambda line: stderr.say(line, 0.0)),
        )
    except (CommandNotFound, OSError) as exc:
        say(f"nixbuild: could not run the command: {exc}")
        return int(ExitCode.FAILED)
    while True:
        status, signum = proc.wait(timeout=0.5)
        if status is not None or signum is not None:
            break
        if interrupted() is not None:
            proc.stop()
    if interrupted() is not None:
        return int(ExitCode.FAILED)
    if status == 0:
        return int(ExitCode.OK)
    how = f"signal {signum}" if signum else f"exit {status}"
    say(f"nixbuild: the command in the dev shell failed ({how}); it is not retried")
    return int(ExitCode.FAILED)
