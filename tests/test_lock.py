"""JobLock with real processes: contention, clean release, stale-lock takeover after SIGKILL."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixbuild.errors import ExitCode, UsageError
from nixbuild.lock import JobLock, JobLocked, parse_holder

HOLDER = textwrap.dedent(
    """
    import sys, time
    from nixbuild.lock import JobLock
    lock = JobLock(sys.argv[1], "torch", command=["nixbuild", "build", "--job", "torch"])
    lock.acquire()
    print("held", flush=True)
    if sys.argv[2] == "release":
        sys.stdin.readline()
        lock.release()
        print("released", flush=True)
    time.sleep(600)
    """
)


@pytest.fixture
def holder_factory(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def start_holder(state: Path, procs: list[subprocess.Popen[str]], mode: str = "hold") -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    procs.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc.pid


def test_second_run_is_refused_with_the_holder_named(
    tmp_path: Path, holder_factory: list[subprocess.Popen[str]]
) -> None:
    pid = start_holder(tmp_path, holder_factory)
    with pytest.raises(JobLocked) as caught:
        JobLock(tmp_path, "torch").acquire()
    assert caught.value.exit_code == ExitCode.TRANSIENT
    assert int(caught.value.exit_code) == 75
    assert f"job 'torch' is already running: pid {pid}" in str(caught.value)
    assert " since 20" in str(caught.value)


def test_other_jobs_are_independent(
    tmp_path: Path, holder_factory: list[subprocess.Popen[str]]
) -> None:
    start_holder(tmp_path, holder_factory)
    with JobLock(tmp_path, "other") as lock:
        assert lock.took_over is None


def test_stale_lock_after_sigkill_is_taken_over(
    tmp_path: Path, holder_factory: list[subprocess.Popen[str]]
) -> None:
    pid = start_holder(tmp_path, holder_factory)
    os.kill(pid, signal.SIGKILL)
    holder_factory[0].wait()
    with JobLock(tmp_path, "torch", command=["nixbuild", "build"]) as lock:
        assert lock.took_over is not None
        assert lock.took_over.pid == pid
        assert lock.took_over.command == ("nixbuild", "build", "--job", "torch")
        assert lock.takeover_message is not None
        assert lock.takeover_message.startswith(f"took over stale lock from pid {pid}")
        # the record now names this process
        holder = parse_holder(lock.path.read_text())
        assert holder is not None
        assert holder.pid == os.getpid()


def test_clean_release_leaves_nothing_to_take_over(
    tmp_path: Path, holder_factory: list[subprocess.Popen[str]]
) -> None:
    start_holder(tmp_path, holder_factory, mode="release")
    proc = holder_factory[0]
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "released"
    with JobLock(tmp_path, "torch") as lock:
        assert lock.took_over is None
        assert lock.takeover_message is None
    assert lock.path.read_text() == ""


def test_record_is_redacted_and_timestamped(tmp_path: Path) -> None:
    now = dt.datetime(2026, 12, 4, 1, 30, tzinfo=dt.UTC)
    argv = ["nixbuild", "build", "--option", "access-tokens", "github.com=secret"]
    with JobLock(tmp_path, "torch", command=argv, now=now) as lock:
        text = lock.path.read_text()
    assert "secret" not in text
    holder = parse_holder(text)
    assert holder is not None
    assert holder.started_at == "2026-12-04T01:30:00+00:00"


def test_in_process_second_acquire_conflicts(tmp_path: Path) -> None:
    with JobLock(tmp_path, "torch"), pytest.raises(JobLocked):
        JobLock(tmp_path, "torch").acquire()


@pytest.mark.parametrize("bad", ["", "a/b", "../x", ".hidden", "-x", "with space", "x" * 65])
def test_bad_job_names_are_usage_errors(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UsageError):
        JobLock(tmp_path, bad)


def test_garbage_record_is_tolerated(tmp_path: Path) -> None:
    assert parse_holder("") is None
    assert parse_holder("not json") is None
    assert parse_holder('{"pid": "x"}') is None
