"""The run ledger: every run and attempt in a small SQLite database (stdlib ``sqlite3``).

It answers `nixbuild history`, gives the adaptive start (the parallelism that last worked
after an OOM) and lets a new run notice runs that died without finishing.

Two nixbuild runs may write at once (a timer-started job and a manual build), so the file
is in WAL mode, every connection waits on a lock (``busy_timeout``) instead of failing, and
every write is one short ``BEGIN IMMEDIATE`` transaction. The schema is versioned; a
migration is one more entry in ``_MIGRATIONS``.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType

from .decisiontext import format_seconds
from .ledger_db import ledger_error, open_db, schema_version
from .model import AttemptRecord, Kind, Variant

LEDGER_FILENAME = "ledger.sqlite3"

RUNNING = "running"
ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class AttemptRow:
    number: int
    installable: str
    variant: Variant
    cores: int
    max_jobs: int
    started_at: str
    duration_s: float | None
    exit_status: int | None
    kind: Kind | None  # None: the attempt succeeded
    rule: str | None
    drv: str | None
    explanation: str | None
    action: str | None  # the decision taken after it, if any
    delay_s: float | None
    log: str | None


@dataclass(frozen=True, slots=True)
class RunRow:
    id: int
    run_id: str
    job: str | None
    installable: str
    status: str
    exit_code: int | None
    variant: Variant | None
    started_at: str
    finished_at: str | None
    duration_s: float | None
    run_dir: str | None
    pid: int | None
    host: str | None
    outputs: tuple[str, ...]
    attempts: tuple[AttemptRow, ...]


# The SQL reads and writes exactly the columns these rows have, in their order.
_RUN_FIELDS = tuple(f.name for f in fields(RunRow) if f.name != "attempts")
_ATTEMPT_FIELDS = tuple(f.name for f in fields(AttemptRow))
# Recording an attempt twice (before and after its decision) updates it in place.
_UPSERT_ATTEMPT = (
    f"INSERT INTO attempts (run, {', '.join(_ATTEMPT_FIELDS)})"
    f" VALUES (:run, {', '.join(':' + f for f in _ATTEMPT_FIELDS)})"
    " ON CONFLICT (run, number) DO UPDATE SET "
    + ", ".join(f"{f} = excluded.{f}" for f in _ATTEMPT_FIELDS if f != "number")
)


@dataclass(frozen=True, slots=True)
class LiveRun:
    """What ``abandoned_runs`` needs to know about a run still marked running."""

    id: int
    pid: int | None
    host: str | None


def abandoned_runs(
    running: Iterable[LiveRun], host: str, is_alive: Callable[[int], bool]
) -> list[int]:
    """Ids of runs on this ``host`` whose process is gone.

    Runs of other hosts (a ledger on a shared home directory) and runs without a pid cannot
    be checked from here and are left alone. A reused pid makes a dead run look alive; that
    errs on the side of not touching it.
    """
    return [r.id for r in running if r.host == host and r.pid is not None and not is_alive(r.pid)]


def describe_run(row: RunRow) -> str:
    """One line of `nixbuild history`: when, which run, the outcome and the attempt chain.

    ``2026-12-04T01:30:00+00:00  20261204T013000-4f2a  torch  success (source, exit 0) in
    1 h 28 min: oom@8/1 → ok@4/1`` (each attempt as outcome@cores/max-jobs; ``bin:`` marks the
    prebuilt variant).
    """
    outcome = row.status
    if row.exit_code is not None:
        variant = f"{row.variant}, " if row.variant is not None else ""
        outcome += f" ({variant}exit {row.exit_code})"
    if row.duration_s is not None:
        outcome += f" in {format_seconds(row.duration_s)}"
    chain = " → ".join(
        f"{'bin:' if a.variant is Variant.BIN else ''}{a.kind or 'ok'}@{a.cores}/{a.max_jobs}"
        for a in row.attempts
    )
    name = row.job or row.installable
    return f"{row.started_at}  {row.run_id}  {name}  {outcome}" + (f": {chain}" if chain else "")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it just is not ours
    return True


class Ledger:
    """One connection to the ledger file. Use as a context manager, or call ``close``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_db(path)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def schema_version(self) -> int:
        with self._errors("read"):
            return schema_version(self._db)

    # --- writing ------------------------------------------------------------------------------

    def start_run(
        self,
        *,
        run_id: str,
        installable: str,
        started_at: str,
        job: str | None = None,
        run_dir: str | None = None,
        pid: int | None = None,
        host: str | None = None,
    ) -> int:
        """Record a run as ``running``; returns its ledger id for the other calls."""
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO runs (run_id, job, installable, status, started_at, run_dir, pid,"
                " host) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, job, installable, RUNNING, started_at, run_dir, pid, host),
            )
            assert cursor.lastrowid is not None  # an INSERT into a rowid table always has one
            return cursor.lastrowid

    def record_attempt(self, run: int, record: AttemptRecord) -> None:
        """Store an attempt; recording the same number again replaces it (e.g. once decided)."""
        d, decision, spec = record.diagnosis, record.decision, record.spec
        values = {
            "run": run,
            "number": record.number,
            "installable": spec.installable,
            "variant": str(spec.variant),
            "cores": spec.cores,
            "max_jobs": spec.max_jobs,
            "started_at": record.started_at,
            "duration_s": record.duration_s,
            "exit_status": record.exit_status,
            "kind": None if d is None else str(d.kind),
            "rule": None if d is None else d.rule,
            "drv": None if d is None else d.drv,
            "explanation": None if d is None else d.explanation,
            "action": None if decision is None else decision.action,
            "delay_s": None if decision is None else decision.delay_s,
            "log": record.log,
        }
        with self._write() as db:
            db.execute(_UPSERT_ATTEMPT, values)

    def finish_run(
        self,
        run: int,
        *,
        status: str,
        exit_code: int,
        variant: Variant | None,
        finished_at: str,
        duration_s: float,
        outputs: Sequence[str] = (),
    ) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE runs SET status = ?, exit_code = ?, variant = ?, finished_at = ?,"
                " duration_s = ?, outputs = ? WHERE id = ?",
                (
                    status,
                    exit_code,
                    None if variant is None else str(variant),
                    finished_at,
                    duration_s,
                    json.dumps(list(outputs)),
                    run,
                ),
            )

    def mark_abandoned(
        self,
        *,
        host: str,
        is_alive: Callable[[int], bool] = pid_alive,
        finished_at: str | None = None,
    ) -> list[str]:
        """Runs on ``host`` still ``running`` whose process is gone become ``abandoned``.

        Returns their run ids. The check and the update are one transaction, so two runs
        starting together do not both report the same abandoned run.
        """
        with self._write() as db:
            live = [
                LiveRun(id=row[0], pid=row[1], host=row[2])
                for row in db.execute("SELECT id, pid, host FROM runs WHERE status = ?", (RUNNING,))
            ]
            dead = abandoned_runs(live, host, is_alive)
            marked: list[str] = []
            for run in dead:
                db.execute(
                    "UPDATE runs SET status = ?, finished_at = ? WHERE id = ?",
                    (ABANDONED, finished_at, run),
                )
                marked.append(
                    db.execute("SELECT run_id FROM runs WHERE id = ?", (run,)).fetchone()[0]
                )
            return marked

    # --- reading ------------------------------------------------------------------------------

    def history(
        self, job: str | None = None, installable: str | None = None, limit: int = 20
    ) -> list[RunRow]:
        """The newest ``limit`` runs (newest first), optionally of one job or installable."""
        where, args = [], []
        if job is not None:
            where.append("job = ?")
            args.append(job)
        if installable is not None:
            where.append("installable = ?")
            args.append(installable)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._errors("read"):
            # Only fixed column names are interpolated; values are bound parameters.
            runs = self._db.execute(
                f"SELECT {', '.join(_RUN_FIELDS)} FROM runs {clause} ORDER BY id DESC LIMIT ?",
                (*args, max(0, limit)),
            ).fetchall()
            return [self._run_row(row) for row in runs]

    def last_good_parallelism(self, installable: str) -> tuple[int, int] | None:
        """(cores, max_jobs) of the last successful source attempt that followed an OOM in
        the same run: where the next run of ``installable`` should start (adaptive start)."""
        with self._errors("read"):
            row = self._db.execute(
                "SELECT a.cores, a.max_jobs FROM attempts AS a JOIN runs AS r ON a.run = r.id"
                " WHERE a.installable = ? AND a.variant = ? AND a.kind IS NULL"
                " AND a.exit_status = 0 AND EXISTS (SELECT 1 FROM attempts AS o"
                "   WHERE o.run = a.run AND o.number < a.number AND o.kind = ?)"
                " ORDER BY r.id DESC, a.number DESC LIMIT 1",
                (installable, str(Variant.SOURCE), str(Kind.OOM)),
            ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def _run_row(self, row: sqlite3.Row) -> RunRow:
        attempts = self._db.execute(
            f"SELECT {', '.join(_ATTEMPT_FIELDS)} FROM attempts WHERE run = ? ORDER BY number",
            (row["id"],),
        ).fetchall()
        values = dict(row)
        values["variant"] = None if row["variant"] is None else Variant(row["variant"])
        values["outputs"] = tuple(json.loads(row["outputs"]))
        values["attempts"] = tuple(_attempt_row(a) for a in attempts)
        return RunRow(**values)

    # --- plumbing -----------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: a concurrent writer waits (busy_timeout)
        # at BEGIN rather than failing halfway through with "database is locked".
        with self._errors("write to"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _errors(self, verb: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise ledger_error(self.path, verb, exc) from exc


def _attempt_row(row: sqlite3.Row) -> AttemptRow:
    values = dict(row)
    values["variant"] = Variant(row["variant"])
    values["kind"] = None if row["kind"] is None else Kind(row["kind"])
    return AttemptRow(**values)
