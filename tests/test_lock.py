"""JobLock with real processes: contention, clean release, stale-lock takeover after SIGKILL."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import fill_up, require
from test_build_e2e import nixbuild

from nixbuild.errors import ExitCode, UsageError
from nixbuild.lock import JobLock, JobLocked, lock_name, parse_holder

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


# --- state directories that cannot hold a lock -------------------------------------------


def _file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("in the way")
    return path


def _state_is_a_file(tmp_path: Path) -> Path:
    return _file(tmp_path / "state")


def _state_in_proc(_: Path) -> Path:
    return Path("/proc/nixbuild-no-such-dir")  # mkdir there fails: ENOENT


def _locks_is_a_file(tmp_path: Path) -> Path:
    return _file(tmp_path / "state" / "locks").parent


def _lock_is_a_dir(tmp_path: Path) -> Path:
    (tmp_path / "state" / "locks" / "torch.lock").mkdir(parents=True)
    return tmp_path / "state"


def _lock_is_a_fifo(tmp_path: Path) -> Path:
    (tmp_path / "state" / "locks").mkdir(parents=True)
    os.mkfifo(tmp_path / "state" / "locks" / "torch.lock")
    return tmp_path / "state"


@pytest.mark.parametrize(
    ("arrange", "reason"),
    [
        (_state_is_a_file, "Not a directory"),
        (_state_in_proc, "No such file or directory"),
        (_locks_is_a_file, "exists and is not a directory"),
        (_lock_is_a_dir, "Is a directory"),
        (_lock_is_a_fifo, "not a regular file"),
    ],
)
def test_an_unusable_state_dir_is_a_usage_error_naming_it(
    tmp_path: Path, arrange: Callable[[Path], Path], reason: str
) -> None:
    state_dir = arrange(tmp_path)
    with pytest.raises(UsageError) as caught:
        JobLock(state_dir, "torch").acquire()
    error = caught.value
    assert error.exit_code == ExitCode.USAGE
    assert reason in error.message
    assert str(state_dir / "locks") in error.message
    assert error.hint is not None and "NIXBUILD_STATE_DIR" in error.hint


def test_a_record_that_cannot_be_written_leaves_no_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    for existing in (False, True):  # a new lock file, and one a clean release left behind
        if existing:
            JobLock(tmp_path, "torch").acquire().release()
        with monkeypatch.context() as patch:
            patch.setattr(os, "pwrite", full)
            with pytest.raises(UsageError, match="No space left on device") as caught:
                JobLock(tmp_path, "torch").acquire()
        assert str(tmp_path / "locks" / "torch.lock") in caught.value.message
        assert not (tmp_path / "locks" / "torch.lock").exists()
    with JobLock(tmp_path, "torch") as lock:  # and once there is room, all is well
        assert lock.took_over is None


def test_a_lock_file_removed_before_it_is_locked_is_opened_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run whose write failed removes the file; one that opened it just before must not
    # lock the orphan (two runs would hold "the" lock): it opens the file again.
    real_flock = fcntl.flock
    calls: list[int] = []

    def flock_after_removal(fd: int, operation: int) -> None:
        if not calls:
            (tmp_path / "locks" / "torch.lock").unlink()
        calls.append(fd)
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_removal)
    with JobLock(tmp_path, "torch") as lock:
        assert len(calls) == 2
        assert parse_holder(lock.path.read_text()) is not None


@pytest.fixture
def full_tmpfs(tiny_tmpfs: Path) -> Path:
    """A state directory on a full file system (its locks/ made while there was room)."""
    (tiny_tmpfs / "locks").mkdir()
    fill_up(tiny_tmpfs)
    return tiny_tmpfs


def test_a_full_state_filesystem_is_a_usage_error_and_leaves_no_lock_file(
    full_tmpfs: Path,
) -> None:
    with pytest.raises(UsageError, match="No space left on device") as caught:
        JobLock(full_tmpfs, "torch").acquire()
    assert caught.value.hint is not None and "writable directory" in caught.value.hint
    assert list((full_tmpfs / "locks").iterdir()) == []


# --- two real nixbuild runs of one job -----------------------------------------------------


def processes_with_arg(marker: str) -> list[int]:
    """Pids whose command line contains ``marker`` (the flake dir is unique per test)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().split(") ", 1)[1][:1]
        except (OSError, IndexError):
            continue
        if marker in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


def start_slow_job(
    tmp_path: Path, flake: Path, seconds: int
) -> tuple[list[str], subprocess.Popen[bytes]]:
    """``nixbuild build --job slow`` in the background, once its builder sleeps ``seconds``
    (a duration no other test uses, so the builder can be found by its command line)."""
    (flake / "sleep.txt").write_text(str(seconds))
    (tmp_path / "nixbuild.toml").write_text(
        f'[jobs.slow]\ninstallable = "path:{flake}#slow"\nlog_dir = "{tmp_path}/logs"\n'
        "max_attempts = 1\nno_fallback = true\n"
    )
    argv = [sys.executable, "-m", "nixbuild", "build", "--job", "slow"]
    run = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock_file = Path(os.environ["XDG_STATE_HOME"]) / "nixbuild" / "locks" / "slow.lock"
    for _ in range(600):
        holds = lock_file.is_file() and lock_file.read_text() != ""
        if holds and processes_with_arg(f"/bin/sleep {seconds}"):
            return argv, run
        assert run.poll() is None, run.communicate()
        subprocess.run(["/bin/sleep", "0.1"], check=True)
    run.kill()
    pytest.fail(f"the builder never started: {run.communicate()}")


def kill_builders(seconds: int) -> None:
    """Remove builders a test's killed nixbuild left behind (found by their unique argv)."""
    for pid in processes_with_arg(f"/bin/sleep {seconds}"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.nix
def test_second_run_of_a_job_exits_75_and_a_killed_run_is_taken_over(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    require("nix")
    argv, first = start_slow_job(tmp_path, flake, 617)
    try:
        second = subprocess.run(
            argv, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
        )
        assert second.returncode == 75, second.stderr
        assert f"job 'slow' is already running: pid {first.pid}" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
        kill_builders(617)
    (flake / "sleep.txt").write_text("0")
    third = subprocess.run(
        argv, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert third.returncode == 0, third.stderr
    assert f"took over stale lock from pid {first.pid}" in third.stderr


@pytest.mark.nix
def test_sigkill_of_nixbuild_leaves_no_builder(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    require("nix")
    _argv, run = start_slow_job(tmp_path, flake, 618)
    try:
        run.send_signal(signal.SIGKILL)
        run.communicate()
        for _ in range(100):
            if not processes_with_arg(str(flake)) + processes_with_arg("/bin/sleep 618"):
                break
            subprocess.run(["/bin/sleep", "0.1"], check=True)
        assert processes_with_arg(str(flake)) == []  # nix itself
        assert processes_with_arg("/bin/sleep 618") == []  # nix's builder
        # The next run finds the killed one still "running" with a dead pid: abandoned.
        (flake / "sleep.txt").write_text("0")
        (flake / "nonce.txt").write_text("after-sigkill")
        argv = [sys.executable, "-m", "nixbuild", "build", "--job", "slow"]
        after = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=False)
        assert after.returncode == 0, after.stderr
        history = subprocess.run(
            [sys.executable, "-m", "nixbuild", "history", "--job", "slow"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        assert len(history) == 2
        assert " success " in history[0] and history[1].endswith(" abandoned"), history
    finally:
        kill_builders(618)


def test_lock_names() -> None:
    # A job locks its name; any other run locks its installable, made safe for a file name.
    assert lock_name("nightly-torch", "nixpkgs#python3Packages.torch") == "nightly-torch"
    name = lock_name(None, "path:/src/my flake#packages.x86_64-linux.default")
    assert re.fullmatch(r"path-src-my-flake-packages\.x86_64-linux-[0-9a-f]{8}", name)  # cut at 40
    assert lock_name(None, "nixpkgs#hello") != lock_name(None, "nixpkgs#hello^out")
    assert lock_name(None, "nixpkgs#hello") == lock_name(None, "nixpkgs#hello")
    assert re.fullmatch(r"[0-9a-f]{8}", lock_name(None, "///"))
    assert len(lock_name(None, "x" * 500)) == 40 + 1 + 8


@pytest.mark.nix
def test_a_state_dir_that_is_a_file_exits_2_with_a_clear_message(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    require("nix")
    not_a_dir = tmp_path / "state-file"
    not_a_dir.write_text("not a directory")
    result = nixbuild(
        "build",
        f"path:{flake}#ok",
        cwd=tmp_path,
        env={**os.environ, "XDG_STATE_HOME": str(not_a_dir)},
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot create the lock directory {not_a_dir}/nixbuild/locks" in result.stderr
    assert "hint: set NIXBUILD_STATE_DIR or state_dir to a writable directory" in result.stderr
