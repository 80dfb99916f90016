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


def test_a_program_exec_refuses_is_command_not_found(tmp_path: Path) -> None:
    # Executable but not a program for this machine: exec fails in the child (ENOEXEC),
    # which sh reports as its own ForkException; nixbuild's callers handle one error type.
    bogus = tmp_path / "nix"
    bogus.write_bytes(b"\x7fELF\x00 not really")
    bogus.chmod(0o755)
    with pytest.raises(CommandNotFound, match=r"cannot be started: .*Exec format error"):
        run_capture([str(bogus), "--version"])
    with pytest.raises(CommandNotFound, match=r"cannot be started: .*Exec format error"):
        Supervised([str(bogus)], on_stdout=lambda _: None, on_stderr=lambda _: None)


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


def test_lines_survive_split_writes_multibyte_text_and_carriage_returns() -> None:
    # One "é" written as two separate bytes, a CRLF line, and a last line without newline.
    script = r"printf 'a\303'; sleep 0.05; printf '\251b\r\nsecond\nno newline'"
    out: list[str] = []
    child = Supervised(["bash", "-c", script], on_stdout=out.extend, on_stderr=out.extend)
    assert child.wait(timeout=30) == (0, None)
    assert out == ["aéb", "second", "no newline"]


def test_a_flood_arrives_complete_and_in_batches() -> None:
    batches: list[list[str]] = []
    child = Supervised(
        ["bash", "-c", "for ((i = 0; i < 20000; i++)); do echo line $i; done >&2"],
        on_stdout=batches.append,
        on_stderr=batches.append,
    )
    assert child.wait(timeout=60) == (0, None)
    lines = [line for batch in batches for line in batch]
    assert lines == [f"line {i}" for i in range(20000)]
    assert len(batches) < len(lines)  # handed over in batches, not line by line


def test_a_failing_output_callback_is_raised_by_wait_and_the_pipe_is_still_drained() -> None:
    def broken(lines: list[str]) -> None:
        raise ValueError("consumer bug")

    # 4 MiB of output: more than the pipe holds, so the child would block if not drained.
    child = Supervised(
        ["bash", "-c", "head -c 4194304 /dev/zero | tr '\\0' 'x' | fold -w 100"],
        on_stdout=broken,
        on_stderr=broken,
    )
    with pytest.raises(ValueError, match="consumer bug"):
        child.wait(timeout=60)


def test_a_grandchild_holding_the_pipe_does_not_hold_up_the_exit() -> None:
    out: list[str] = []
    child = Supervised(
        ["bash", "-c", "echo first; (sleep 30 &) ; exit 0"],
        on_stdout=out.extend,
        on_stderr=out.extend,
    )
    started = time.monotonic()
    assert child.wait(timeout=20) == (0, None)
    assert time.monotonic() - started < 15  # the 2 s drain grace, not the grandchild's 30 s
    assert out == ["first"]
    child.stop(grace_s=1)  # the orphaned sleep is in the child's group: end it


def test_the_pipes_report_their_capacity_and_the_largest_read() -> None:
    seen: list[str] = []
    child = Supervised(
        ["bash", "-c", "head -c 300000 /dev/zero | tr '\\0' 'x' | fold -w 99"],
        on_stdout=seen.extend,
        on_stderr=seen.extend,
    )
    assert child.wait(timeout=60) == (0, None)
    assert child.pipe_capacity_bytes == 1 << 20  # asked for with F_SETPIPE_SZ
    assert 0 < child.pipe_peak_bytes <= child.pipe_capacity_bytes
    assert len(seen) == 300000 // 99 + 1
