"""The run ledger against real SQLite files (tmp_path), including real concurrent writers."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_build_e2e import nixbuild

from nixbuild.errors import ExitCode, NixbuildError
from nixbuild.ledger import (
    ABANDONED,
    RUNNING,
    Ledger,
    LiveRun,
    abandoned_runs,
    describe_run,
    pid_alive,
)
from nixbuild.ledger_db import LedgerError, ledger_error
from nixbuild.model import (
    AttemptRecord,
    AttemptSpec,
    Decision,
    Diagnosis,
    Kind,
    Variant,
)

REPO = Path(__file__).resolve().parent.parent
TORCH = "nixpkgs#python312Packages.torch"
TORCH_BIN = "nixpkgs#python312Packages.torch-bin"


def attempt(
    number: int,
    cores: int,
    kind: Kind | None,
    *,
    max_jobs: int = 1,
    installable: str = TORCH,
    variant: Variant = Variant.SOURCE,
    decision: Decision | None = None,
) -> AttemptRecord:
    spec = AttemptSpec(installable, cores, max_jobs, variant)
    diagnosis = None
    if kind is not None:
        diagnosis = Diagnosis(kind, f"{kind}.test", f"it failed: {kind}", drv="/nix/store/x.drv")
    return AttemptRecord(
        number=number,
        spec=spec,
        command=("nix", "build", installable),
        started_at=f"2026-12-04T01:{number:02d}:00+00:00",
        duration_s=60.0 * number,
        exit_status=0 if kind is None else 1,
        log=f"attempt-{number}.log",
        diagnosis=diagnosis,
        decision=decision,
        outputs=() if kind is not None else ("/nix/store/abc-torch",),
    )


def store_run(
    ledger: Ledger,
    run_id: str,
    attempts: list[AttemptRecord],
    *,
    installable: str = TORCH,
    job: str | None = None,
    status: str = "success",
) -> int:
    run = ledger.start_run(
        run_id=run_id,
        installable=installable,
        started_at="2026-12-04T01:00:00+00:00",
        job=job,
        run_dir=f"logs/{run_id}",
        pid=os.getpid(),
        host="testhost",
    )
    for record in attempts:
        ledger.record_attempt(run, record)
    ledger.finish_run(
        run,
        status=status,
        exit_code=0 if status in {"success", "fallback"} else 1,
        variant=attempts[-1].spec.variant if attempts else None,
        finished_at="2026-12-04T03:00:00+00:00",
        duration_s=7200.0,
        outputs=attempts[-1].outputs if attempts else (),
    )
    return run


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state" / "nested" / "ledger.sqlite3"  # parent dirs are created
    degrade = Decision("degrade", 45.0, AttemptSpec(TORCH, 4, 1), "out of memory")
    with Ledger(path) as ledger:
        store_run(
            ledger,
            "20261204T013000-4f2a",
            [attempt(1, 8, Kind.OOM, decision=degrade), attempt(2, 4, None)],
            job="torch",
        )
    with Ledger(path) as reopened:
        (row,) = reopened.history()
    assert row.run_id == "20261204T013000-4f2a"
    assert (row.job, row.installable, row.status, row.exit_code) == ("torch", TORCH, "success", 0)
    assert row.variant is Variant.SOURCE
    assert (row.started_at, row.finished_at, row.duration_s) == (
        "2026-12-04T01:00:00+00:00",
        "2026-12-04T03:00:00+00:00",
        7200.0,
    )
    assert (row.run_dir, row.pid, row.host) == (
        "logs/20261204T013000-4f2a",
        os.getpid(),
        "testhost",
    )
    assert row.outputs == ("/nix/store/abc-torch",)
    first, second = row.attempts
    assert (first.number, first.cores, first.max_jobs, first.variant) == (1, 8, 1, Variant.SOURCE)
    assert (first.kind, first.rule, first.drv) == (Kind.OOM, "oom.test", "/nix/store/x.drv")
    assert (first.action, first.delay_s, first.exit_status) == ("degrade", 45.0, 1)
    assert (first.explanation, first.log, first.duration_s) == (
        "it failed: oom",
        "attempt-1.log",
        60.0,
    )
    assert (second.kind, second.action, second.exit_status, second.cores) == (None, None, 0, 4)


def test_describe_run_gives_one_history_line(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        store_run(
            ledger,
            "20261204T013000-4f2a",
            [
                attempt(1, 8, Kind.OOM),
                attempt(2, 4, Kind.OOM),
                attempt(3, 4, None, installable=TORCH_BIN, variant=Variant.BIN),
            ],
            job="torch",
            status="fallback",
        )
        ledger.start_run(run_id="20261205T013000-0b1c", installable=TORCH, started_at="t0")
        unfinished, done = ledger.history()
    assert describe_run(done) == (
        "2026-12-04T01:00:00+00:00  20261204T013000-4f2a  torch  fallback (bin, exit 0)"
        " in 2 h: oom@8/1 → oom@4/1 → bin:ok@4/1"
    )
    assert describe_run(unfinished) == f"t0  20261205T013000-0b1c  {TORCH}  running"


def test_recording_an_attempt_again_updates_it(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        run = ledger.start_run(run_id="r1", installable=TORCH, started_at="t0")
        ledger.record_attempt(run, attempt(1, 8, Kind.NETWORK))
        retry = Decision("retry", 31.5, AttemptSpec(TORCH, 8, 1), "network")
        ledger.record_attempt(run, attempt(1, 8, Kind.NETWORK, decision=retry))
        (row,) = ledger.history()
    assert row.status == RUNNING
    assert row.finished_at is None
    assert [(a.number, a.action, a.delay_s) for a in row.attempts] == [(1, "retry", 31.5)]


def test_history_is_newest_first_and_filters(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        store_run(ledger, "a", [attempt(1, 8, None)], job="torch")
        store_run(ledger, "b", [attempt(1, 8, Kind.EVAL)], installable=".#other", status="failed")
        store_run(ledger, "c", [attempt(1, 8, None)], job="torch")
        assert [r.run_id for r in ledger.history()] == ["c", "b", "a"]
        assert [r.run_id for r in ledger.history(job="torch")] == ["c", "a"]
        assert [r.run_id for r in ledger.history(installable=".#other")] == ["b"]
        assert [r.run_id for r in ledger.history(job="torch", limit=1)] == ["c"]
        assert ledger.history(job="nope") == []


def test_file_is_versioned_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    with Ledger(path) as ledger:
        assert ledger.schema_version() == 1
    with Ledger(path) as again:  # opening an existing ledger does not migrate twice
        assert again.schema_version() == 1
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    finally:
        raw.close()


def test_a_ledger_from_a_newer_nixbuild_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    Ledger(path).close()
    raw = sqlite3.connect(path)
    with raw:
        raw.execute("INSERT INTO schema_version (version) VALUES (99)")
    raw.close()
    with pytest.raises(LedgerError, match="newer nixbuild") as caught:
        Ledger(path)
    assert caught.value.hint is not None


# --- adaptive start ---------------------------------------------------------------------------


def test_last_good_parallelism_remembers_what_worked_after_an_oom(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        assert ledger.last_good_parallelism(TORCH) is None
        # Success without an OOM teaches nothing.
        store_run(ledger, "r1", [attempt(1, 8, None)])
        assert ledger.last_good_parallelism(TORCH) is None
        # OOM at 8, success at 4: the next run starts at 4.
        store_run(ledger, "r2", [attempt(1, 8, Kind.OOM), attempt(2, 4, None)])
        assert ledger.last_good_parallelism(TORCH) == (4, 1)
        # That next run succeeds at 4 straight away: still remembered.
        store_run(ledger, "r3", [attempt(1, 4, None)])
        assert ledger.last_good_parallelism(TORCH) == (4, 1)
        # A network failure before success is not an OOM.
        store_run(ledger, "r4", [attempt(1, 8, Kind.NETWORK), attempt(2, 8, None)])
        assert ledger.last_good_parallelism(TORCH) == (4, 1)
        # OOM again at 4 with max-jobs 2, success at 2/1: that is the newest knowledge.
        store_run(
            ledger,
            "r5",
            [attempt(1, 4, Kind.OOM, max_jobs=2), attempt(2, 4, Kind.OOM), attempt(3, 2, None)],
        )
        assert ledger.last_good_parallelism(TORCH) == (2, 1)
        # A run that fell back to -bin says nothing about the source's parallelism.
        store_run(
            ledger,
            "r6",
            [
                attempt(1, 2, Kind.OOM),
                attempt(2, 1, None, installable=TORCH_BIN, variant=Variant.BIN),
            ],
            status="fallback",
        )
        assert ledger.last_good_parallelism(TORCH) == (2, 1)
        assert ledger.last_good_parallelism(TORCH_BIN) is None
        assert ledger.last_good_parallelism(".#something-else") is None


# --- abandoned runs ---------------------------------------------------------------------------


def test_abandoned_runs_is_a_pure_selection() -> None:
    runs = [
        LiveRun(1, 100, "here"),
        LiveRun(2, 200, "here"),
        LiveRun(3, 100, "elsewhere"),  # another machine's pid means nothing here
        LiveRun(4, None, "here"),  # nothing to check
    ]
    assert abandoned_runs(runs, "here", is_alive=lambda pid: pid == 200) == [1]
    assert abandoned_runs(runs, "here", is_alive=lambda _pid: True) == []


def dead_pid() -> int:
    """The pid of a real process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_mark_abandoned_with_real_processes(tmp_path: Path) -> None:
    gone = dead_pid()
    assert pid_alive(os.getpid())
    assert not pid_alive(gone)
    with Ledger(tmp_path / "l.sqlite3") as ledger:

        def start(run_id: str, pid: int, host: str) -> int:
            return ledger.start_run(
                run_id=run_id, installable=TORCH, started_at="t0", pid=pid, host=host
            )

        start("crashed", gone, "here")
        start("alive", os.getpid(), "here")
        start("other-host", gone, "elsewhere")
        finished = start("finished", gone, "here")
        ledger.finish_run(
            finished, status="failed", exit_code=1, variant=None, finished_at="t1", duration_s=1
        )
        assert ledger.mark_abandoned(host="here", finished_at="t9") == ["crashed"]
        assert ledger.mark_abandoned(host="here") == []  # already marked
        status = {r.run_id: (r.status, r.finished_at) for r in ledger.history()}
    assert status == {
        "crashed": (ABANDONED, "t9"),
        "alive": (RUNNING, None),
        "other-host": (RUNNING, None),
        "finished": ("failed", "t1"),
    }


# --- concurrent writers -----------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from nixbuild.ledger import Ledger
    from nixbuild.model import AttemptRecord, AttemptSpec

    path, tag, go, count = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    (go.parent / f"ready-{tag}").touch()
    while not go.exists():  # start together, so the file is created in a race too
        time.sleep(0.001)
    with Ledger(path) as ledger:
        for i in range(count):
            run = ledger.start_run(run_id=f"{tag}-{i}", installable=f".#{tag}",
                                   started_at="t0", pid=os.getpid(), host="h")
            for n in (1, 2):
                spec = AttemptSpec(f".#{tag}", 8 // n, 1)
                ledger.record_attempt(run, AttemptRecord(n, spec, (), "t0", 1.0, 0, "log"))
            ledger.finish_run(run, status="success", exit_code=0, variant=None,
                              finished_at="t1", duration_s=2.0)
    """
)


def wait_for_files(paths: list[Path], processes: list[subprocess.Popen[str]]) -> None:
    """Until every writer has imported everything and waits at the starting line."""
    while not all(p.exists() for p in paths):
        if any(proc.poll() is not None for proc in processes):
            return  # one died early: its stderr tells why, below
        time.sleep(0.005)


def test_concurrent_runs_are_all_recorded(tmp_path: Path) -> None:
    path, go, count = tmp_path / "ledger.sqlite3", tmp_path / "go", 100
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    tags = ["alpha", "beta", "gamma"]
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), tag, str(go), str(count)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in tags
    ]
    wait_for_files([tmp_path / f"ready-{tag}" for tag in tags], writers)
    go.touch()
    results = [w.communicate(timeout=120) for w in writers]
    for writer, (_, err) in zip(writers, results, strict=True):
        assert writer.returncode == 0, err
        assert "locked" not in err
    with Ledger(path) as ledger:
        runs = ledger.history(limit=1000)
    assert len(runs) == count * len(tags)
    assert {r.run_id for r in runs} == {f"{t}-{i}" for t in tags for i in range(count)}
    assert all(r.status == "success" and len(r.attempts) == 2 for r in runs)
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert raw.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 1
    finally:
        raw.close()


def test_a_writer_waits_for_a_held_lock_instead_of_failing(tmp_path: Path) -> None:
    path, go = tmp_path / "ledger.sqlite3", tmp_path / "go"
    Ledger(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another run in the middle of a write
    try:
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), "late", str(go), "1"],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for_files([tmp_path / "ready-late"], [writer])
        go.touch()
        time.sleep(0.3)  # long enough to reach the lock; no timing is asserted
        assert writer.poll() is None, writer.communicate()[1]  # it is waiting, not failing
    finally:
        holder.execute("COMMIT")
        holder.close()
    _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    with Ledger(path) as ledger:
        assert [r.run_id for r in ledger.history()] == ["late-0"]


# --- unusable files ---------------------------------------------------------------------------


def test_a_file_that_is_not_a_database_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"this is not sqlite at all\n" * 100)
    with pytest.raises(LedgerError) as caught:
        Ledger(path)
    assert isinstance(caught.value, NixbuildError)
    assert str(path) in caught.value.message
    assert "not a readable SQLite database" in caught.value.message
    assert caught.value.hint is not None
    assert "move ledger.sqlite3 aside" in caught.value.hint


def test_a_damaged_database_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with Ledger(path) as ledger:
        store_run(ledger, "r1", [attempt(1, 8, None)])
    data = bytearray(path.read_bytes())
    data[:16] = b"garbage garbage!"  # the header magic
    path.write_bytes(bytes(data))
    for leftover in tmp_path.glob("ledger.sqlite3-*"):  # WAL/shm of the closed connection
        leftover.unlink()
    with pytest.raises(LedgerError, match="not a readable SQLite database"):
        Ledger(path)


def test_a_directory_in_place_of_the_file_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.mkdir()
    with pytest.raises(LedgerError, match="is a directory"):
        Ledger(path)


def test_an_uncreatable_directory_gives_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    with pytest.raises(LedgerError, match="cannot create the ledger directory") as caught:
        Ledger(blocker / "ledger.sqlite3")
    assert caught.value.hint is not None


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not sqlite at all\n" * 100)


def _truncated(path: Path) -> None:
    with Ledger(path) as ledger:
        store_run(ledger, "r1", [attempt(1, 8, None)])
    for leftover in path.parent.glob("ledger.sqlite3-*"):
        leftover.unlink()
    path.write_bytes(path.read_bytes()[:100])  # the header promises pages that are gone


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        pytest.param(_garbage, "not a readable SQLite database", id="garbage"),
        pytest.param(_truncated, "not a readable SQLite database", id="truncated"),
        pytest.param(os.mkfifo, "is not a regular file", id="fifo"),
        pytest.param(Path.mkdir, "is a directory", id="directory"),
    ],
)
def test_an_unusable_ledger_exits_2_not_1(
    tmp_path: Path, damage: Callable[[Path], object], reason: str
) -> None:
    # Exit 1 means "the build failed"; a ledger that cannot be used is the state directory's
    # problem, a usage/configuration error (exit 2), whatever command meets it.
    path = tmp_path / "ledger.sqlite3"
    damage(path)
    with pytest.raises(LedgerError, match=reason) as caught:
        Ledger(path)
    assert caught.value.exit_code == ExitCode.USAGE
    result = nixbuild(
        "history", cwd=tmp_path, env={**os.environ, "NIXBUILD_STATE_DIR": str(tmp_path)}
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"nixbuild: error: the ledger {path} " in result.stderr.replace(" path ", " ")
    assert reason in result.stderr


def test_a_ledger_locked_too_long_is_transient(tmp_path: Path) -> None:
    error = ledger_error(tmp_path, "write to", sqlite3.OperationalError("database is locked"))
    assert isinstance(error, LedgerError)
    assert error.exit_code == ExitCode.TRANSIENT


def test_a_full_disk_says_so(tmp_path: Path) -> None:
    for text in ("database or disk is full", "disk I/O error"):
        error = ledger_error(tmp_path / "l", "write to", sqlite3.OperationalError(text))
        assert error.exit_code == ExitCode.USAGE
        assert error.hint is not None and "free space" in error.hint
