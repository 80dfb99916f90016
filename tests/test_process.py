"""process.run_capture against real short commands (bash, cat, sleep)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from nixbuild.errors import NixbuildError
from nixbuild.process import CommandNotFound, Supervised, run_capture


def test_status_and_both_streams_are_returned() -> None:
    done = run_capture(["bash", "-c", "echo out; echo err >&2; exit 3"], timeout=30)
    assert (done.status, done.stdout, done.stderr, done.ok) == (3, "out\n", "err\n", False)


def test_stdin_env_and_cwd_reach_the_child(tmp_path: Path) -> None:
    done = run_capture(
        ["bash", "-c", 'read -r line; echo "$line $GREETING $PWD"'],
        stdin="hello\n",
        env={**os.environ, "GREETING": "there"},
        cwd=tmp_path,
    )
    assert done.ok
    assert done.stdout == f"hello there {tmp_path}\n"


def test_a_child_killed_by_a_signal_reads_as_128_plus_the_signal() -> None:
    assert run_capture(["bash", "-c", "kill -9 $$"], timeout=30).status == 137


def test_undecodable_output_is_replaced_not_fatal() -> None:
    done = run_capture(["bash", "-c", r"printf 'a\377b\n'"])
    assert done.stdout == "a\ufffdb\n"


def test_missing_program_is_command_not_found() -> None:
    with pytest.raises(CommandNotFound, match="no-such-program-xyz: command not found"):
        run_capture(["no-such-program-xyz"])


def test_timeout_kills_the_whole_group_and_says_so(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    with pytest.raises(NixbuildError, match=r"did not finish within 0\.5 s"):
        run_capture(["bash", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], timeout=0.5)
    grandchild = int(pidfile.read_text())
    for _ in range(100):  # the kill is asynchronous: give the kernel a moment to reap
        if not Path(f"/proc/{grandchild}").exists() or _is_zombie(grandchild):
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{grandchild}").exists() or _is_zombie(grandchild)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def test_a_supervised_child_reads_end_of_file_and_its_lines_arrive() -> None:
    # A build never reads stdin; a child that tries must see EOF, not wait forever.
    out: list[str] = []
    err: list[str] = []
    child = Supervised(
        ["bash", "-c", "if read -r x; then echo got; else echo eof; fi; echo oops >&2; exit 4"],
        on_stdout=out.extend,
        on_stderr=err.extend,
    )
    assert child.wait(timeout=30) == (4, None)
    assert (out, err) == (["eof"], ["oops"])


def test_supervised_wait_times_out_then_stop_ends_the_group() -> None:
    child = Supervised(["sleep", "60"], on_stdout=print, on_stderr=print)  # no output
    assert child.wait(timeout=0.2) == (None, None)
    child.stop(grace_s=5)
    assert child.wait(timeout=5) == (None, 15)
    assert not child.alive()
