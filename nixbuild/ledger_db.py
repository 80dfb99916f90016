"""The ledger's SQLite file: opening it safely, its versioned schema, its errors.

Split from ledger.py (which reads and writes runs) so each stays small. Opening creates the
directory, applies pending migrations inside one write transaction (two processes creating
the same new file apply each exactly once), switches the file to WAL and turns sqlite's
errors into a LedgerError that says what to do.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from .errors import STATE_DIR_HINT, ExitCode, UsageError

BUSY_TIMEOUT_MS = 30_000

# Each entry moves the schema one version up; never edit an entry once released.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY, run_id TEXT NOT NULL UNIQUE, job TEXT,
        installable TEXT NOT NULL, status TEXT NOT NULL, exit_code INTEGER, variant TEXT,
        started_at TEXT NOT NULL, finished_at TEXT, duration_s REAL, run_dir TEXT,
        pid INTEGER, host TEXT, outputs TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX runs_by_job ON runs (job, id);
    CREATE INDEX runs_by_installable ON runs (installable, id);
    CREATE INDEX runs_by_status ON runs (status);
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        run INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        number INTEGER NOT NULL, installable TEXT NOT NULL, variant TEXT NOT NULL,
        cores INTEGER NOT NULL, max_jobs INTEGER NOT NULL, started_at TEXT NOT NULL,
        duration_s REAL, exit_status INTEGER, kind TEXT, rule TEXT, drv TEXT,
        explanation TEXT, action TEXT, delay_s REAL, log TEXT,
        UNIQUE (run, number)
    );
    CREATE INDEX attempts_by_installable ON attempts (installable, variant);
    """,
)


class LedgerError(UsageError):
    """The ledger cannot be opened or written: a problem of the state directory, not of the
    build, so exit 2 (exit 1 means "the build failed")."""


class LedgerBusy(LedgerError):
    """Another process kept the ledger locked past the timeout: transient, retry (exit 75)."""

    exit_code = ExitCode.TRANSIENT


def open_db(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LedgerError(
            f"cannot create the ledger directory {path.parent}: {exc.strerror or exc}",
            hint=STATE_DIR_HINT,
        ) from exc
    if path.is_dir():
        raise LedgerError(
            f"the ledger path {path} is a directory",
            hint=f"remove it, or {STATE_DIR_HINT}",
        )
    if path.exists() and not path.is_file():
        raise LedgerError(
            f"the ledger path {path} is not a regular file (a FIFO, socket or device)",
            hint=f"remove it, or {STATE_DIR_HINT}",
        )
    db: sqlite3.Connection | None = None
    try:
        # isolation_level=None: no implicit transactions; writes use explicit BEGIN IMMEDIATE.
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys = ON")
        _migrate(db)
        # After the schema exists: switching to WAL needs a moment of exclusive access, and
        # once set it is a property of the file that later connections inherit.
        _switch_to_wal(db)
        db.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; a run writes little
    except BaseException as exc:
        if db is not None:
            db.close()
        if isinstance(exc, sqlite3.Error):
            raise ledger_error(path, "open", exc) from exc
        raise
    return db


def _switch_to_wal(db: sqlite3.Connection) -> None:
    """Put the file in WAL mode, retrying while other openers hold it.

    Changing the journal mode needs the file to itself, and SQLite answers "database is
    locked" at once instead of waiting on busy_timeout (seen with three processes opening
    a new ledger together), so the wait is done here, bounded like any other lock wait.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        try:
            db.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _migrate(db: sqlite3.Connection) -> None:
    # The version check happens inside the write transaction, so two processes creating
    # the same new file apply each migration exactly once.
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
        )
        version = schema_version(db)
        if version > len(_MIGRATIONS):
            raise LedgerError(
                f"the ledger was written by a newer nixbuild (schema {version}, this one"
                f" knows {len(_MIGRATIONS)})",
                hint="upgrade nixbuild, or move the ledger file aside to start a new one",
            )
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            for statement in _statements(script):
                db.execute(statement)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0])


def _statements(script: str) -> list[str]:
    # executescript() would commit our transaction first; the schema has no ';' in literals.
    return [s.strip() for s in script.split(";") if s.strip()]


def ledger_error(path: Path, verb: str, exc: sqlite3.Error) -> LedgerError:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return LedgerBusy(
            f"the ledger {path} stayed locked for {BUSY_TIMEOUT_MS // 1000} s",
            hint="another nixbuild (or a sqlite3 shell) holds it; close that and retry",
        )
    if isinstance(exc, sqlite3.DatabaseError) and (
        "not a database" in text or "malformed" in text or "corrupt" in text
    ):
        return LedgerError(
            f"the ledger {path} is not a readable SQLite database ({text})",
            hint=f"it only holds run history: move {path.name} aside and nixbuild starts a new one",
        )
    if "unable to open" in text or "readonly" in text:
        return LedgerError(
            f"cannot {verb} the ledger {path}: {text}",
            hint="check that the file and its directory are readable and writable, or "
            + STATE_DIR_HINT,
        )
    if "full" in text or "disk I/O" in text:  # ENOSPC shows as either
        return LedgerError(
            f"cannot {verb} the ledger {path}: {text}",
            hint=f"check free space and the filesystem of {path.parent}, or {STATE_DIR_HINT}",
        )
    return LedgerError(
        f"cannot {verb} the ledger {path}: {text}",
        hint=f"it only holds run history: move {path.name} aside and nixbuild starts a new one",
    )
