"""One run per job at a time: an ``flock`` on ``STATE_DIR/locks/JOB.lock``.

The kernel releases an flock when its holder dies, however it dies, so "is someone running
this job" is exactly "can I take the lock". The file's content says who holds it (pid, start
time, command line) for the error message; a clean release empties the file, so content
found by a new holder means the previous run died without releasing (SIGKILL, power loss):
that run is reported as taken over ("abandoned"), never silently.

A state directory that cannot hold the lock (not a directory, read-only, full) is a usage
error (exit 2) naming the path and the reason; a lock file whose record cannot be written
is removed again, so no empty lock file is left behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .errors import STATE_DIR_HINT, ExitCode, NixbuildError, UsageError
from .redact import redact_argv
from .systemd import validate_job_name


def lock_name(job: str | None, target: str) -> str:
    """Runs of a job lock the job; other runs lock their installable (name made lock-safe)."""
    if job:
        return job
    digest = hashlib.sha256(target.encode()).hexdigest()[:8]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", target)[:40].strip(".-")  # cut, then tidy
    return f"{readable}-{digest}" if readable else digest


class JobLocked(NixbuildError):
    """Another run of the same job holds the lock. Transient: retry later (exit 75)."""

    exit_code = ExitCode.TRANSIENT


@dataclass(frozen=True, slots=True)
class LockHolder:
    pid: int
    started_at: str  # ISO 8601, UTC
    command: tuple[str, ...]
    host: str = ""

    def describe(self) -> str:
        where = f" on {self.host}" if self.host else ""
        return f"pid {self.pid}{where} since {self.started_at}"

    def to_json(self) -> str:
        return json.dumps(
            {
                "pid": self.pid,
                "started_at": self.started_at,
                "command": list(self.command),
                "host": self.host,
            }
        )


def parse_holder(text: str) -> LockHolder | None:
    """The holder recorded in a lock file; None for an empty or unreadable record."""
    try:
        data = json.loads(text)
        return LockHolder(
            pid=int(data["pid"]),
            started_at=str(data["started_at"]),
            command=tuple(str(a) for a in data.get("command", ())),
            host=str(data.get("host", "")),
        )
    except (ValueError, KeyError, TypeError):
        return None


class JobLock:
    """``with JobLock(state_dir, job) as lock:`` — raises JobLocked when the job is running.

    After acquiring, ``took_over`` is the holder of a stale lock (a run that died without
    releasing), else None; ``takeover_message`` says so in words.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        job: str,
        *,
        command: Sequence[str] = (),
        now: dt.datetime | None = None,
    ) -> None:
        self.job = validate_job_name(job)
        self.path = Path(state_dir) / "locks" / f"{self.job}.lock"
        self._command = redact_argv(command)
        self._now = now
        self._fd: int | None = None
        self.took_over: LockHolder | None = None

    @property
    def takeover_message(self) -> str | None:
        if self.took_over is None:
            return None
        return (
            f"took over stale lock from pid {self.took_over.pid} "
            f"(started {self.took_over.started_at}); that run ended without releasing it"
        )

    def acquire(self) -> JobLock:
        fd = self._open_locked()
        try:
            self.took_over = parse_holder(_read_all(fd))
            now = self._now or dt.datetime.now(dt.UTC)
            me = LockHolder(
                pid=os.getpid(),
                started_at=now.isoformat(timespec="seconds"),
                command=self._command,
                host=socket.gethostname(),
            )
            os.ftruncate(fd, 0)
            os.pwrite(fd, me.to_json().encode() + b"\n", 0)
            os.fsync(fd)
        except OSError as exc:
            # Nothing half-written: the file goes while we still hold its lock (a run that
            # opened it meanwhile finds it unlinked after locking and opens the new one).
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(fd)
            raise self._unusable(f"cannot write the lock file {self.path}", exc) from exc
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _open_locked(self) -> int:
        """Open and flock the lock file; the descriptor is of the file now at ``self.path``."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError as exc:  # a file (or a dangling symlink) is in the way
            raise UsageError(
                f"cannot create the lock directory {self.path.parent}: it exists and is not"
                " a directory",
                hint=f"remove it, or {STATE_DIR_HINT}",
            ) from exc
        except OSError as exc:
            raise self._unusable(
                f"cannot create the lock directory {self.path.parent}", exc
            ) from exc
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise self._unusable(f"cannot open the lock file {self.path}", exc) from exc
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise UsageError(
                        f"the lock file {self.path} is not a regular file",
                        hint=f"remove it, or {STATE_DIR_HINT}",
                    )
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = parse_holder(_read_all(fd))
                os.close(fd)
                who = holder.describe() if holder else "another process (no record yet)"
                raise JobLocked(
                    f"job {self.job!r} is already running: {who}",
                    hint=f"wait for it to finish; lock file {self.path}",
                ) from None
            except OSError as exc:
                os.close(fd)
                raise self._unusable(f"cannot lock {self.path}", exc) from exc
            except BaseException:
                os.close(fd)
                raise
            if _same_file(fd, self.path):
                return fd
            os.close(fd)  # removed (a failed acquire) between our open and flock: reopen
        raise UsageError(
            f"the lock file {self.path} keeps being replaced while nixbuild locks it",
            hint="something else is deleting files in the state directory; " + STATE_DIR_HINT,
        )

    def _unusable(self, what: str, exc: OSError) -> UsageError:
        return UsageError(f"{what}: {exc.strerror or exc}", hint=STATE_DIR_HINT)

    def release(self) -> None:
        """Empty the record (a clean end), then drop the lock. The file stays: deleting a
        lock file while another process waits on it would let two runs hold "the" lock."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> JobLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except OSError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _read_all(fd: int) -> str:
    chunks: list[bytes] = []
    offset = 0
    while chunk := os.pread(fd, 65536, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks).decode("utf-8", "replace")
