"""The terminal goes away (an ssh session drops, a window closes) during a real build.

nixbuild runs in a pseudo-terminal that is its controlling terminal, as in an ssh session;
closing the terminal's master side makes the kernel send SIGHUP to the session.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import plain_env
from test_build_e2e import leftover, summary_of

from nixbuild.ledger import Ledger

pytestmark = pytest.mark.nix


def run_in_a_terminal_then_hang_up(
    flake: Path, tmp_path: Path, seconds: str, *, nohup: bool = False, argv: list[str] | None = None
) -> int:
    """Start nixbuild (default: `build #slow`) in a terminal, close the terminal once a
    `/bin/sleep SECONDS` runs, and return nixbuild's exit code."""
    (flake / "sleep.txt").write_text(seconds)
    argv = [sys.executable, "-m", "nixbuild", *(argv or [
        "build", f"path:{flake}#slow", "--log-dir", str(tmp_path / "logs"),
        "--out-link", str(tmp_path / "result"), "--no-fallback"])]  # fmt: skip
    pid, master = pty.fork()  # the child's controlling terminal is this pty
    if pid == 0:  # the child: only exec (or exit) from here
        try:
            os.chdir(tmp_path)
            if nohup:
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup(1) does
            os.execve(sys.executable, argv, plain_env())
        finally:
            os._exit(127)
    try:
        deadline = time.monotonic() + 60
        while not leftover(f"/bin/sleep {seconds}"):
            assert time.monotonic() < deadline, "the slow builder never started"
            if select.select([master], [], [], 0.1)[0]:
                os.read(master, 65536)  # drain the terminal, as a terminal emulator would
    finally:
        os.close(master)  # hang up
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def last_run_status() -> str:
    path = Path(os.environ["XDG_STATE_HOME"]) / "nixbuild" / "ledger.sqlite3"
    with Ledger(path) as ledger:
        (row,) = ledger.history(limit=1)
    return row.status


def test_a_hangup_stops_the_build_and_records_it(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    seconds = str(300 + os.getpid() % 500 + 7)  # a sleep nobody else runs, to find leftovers
    code = run_in_a_terminal_then_hang_up(flake, tmp_path, seconds)
    # Like SIGINT and SIGTERM: nix stopped, the run recorded as interrupted, 128 + SIGHUP.
    # (Once it died of the signal itself: no summary, and a ledger row left "running".)
    assert code == 129
    assert leftover(f"/bin/sleep {seconds}") == []
    summary = summary_of(tmp_path / "logs")
    assert (summary["status"], summary["exit_code"]) == ("interrupted", 129)
    (attempt,) = summary["attempts"]
    assert attempt["diagnosis"]["kind"] == "interrupted"
    assert "SIGHUP" in attempt["diagnosis"]["explanation"]
    assert last_run_status() == "interrupted"


def test_under_nohup_the_build_outlives_its_terminal(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    # The terminal is gone before the build ends: every later line fails to reach it (EIO),
    # which once ended the run with a traceback.
    code = run_in_a_terminal_then_hang_up(flake, tmp_path, "3.0", nohup=True)
    assert code == 0
    assert summary_of(tmp_path / "logs")["status"] == "success"
    assert (tmp_path / "result").resolve().name.endswith("-fixture-slow-1.0")
    assert last_run_status() == "success"


def test_under_nohup_a_develop_command_outlives_its_terminal(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    """`run -- nix develop -c CMD` echoes CMD's output itself: that too must survive EIO."""
    argv = ["run", "--log-dir", str(tmp_path / "logs"), "--",
            "nix", "develop", f"path:{flake}#ok", "-c",
            "/bin/sh", "-c", "/bin/sleep 2.5; echo after the hangup"]  # fmt: skip
    code = run_in_a_terminal_then_hang_up(flake, tmp_path, "2.5", nohup=True, argv=argv)
    assert code == 0
    assert summary_of(tmp_path / "logs")["status"] == "success"
    assert last_run_status() == "success"
