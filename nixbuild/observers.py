"""Things that follow a run without steering it: the ledger, systemd, notification hooks.

The supervisor calls every observer at the same points (run started, attempt started,
progress, attempt finished, run finished). An observer's failure is reported once and never
stops the build: a locked ledger or a dead notification socket is no reason to throw away
hours of compiling.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .errors import NixbuildError
from .ledger import Ledger
from .model import AttemptRecord, AttemptSpec
from .process import run_capture
from .summary import Outcome
from .systemd import Notifier

Warn = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class RunStart:
    run_id: str
    run_dir: str
    job: str | None
    installable: str
    started_at: str


class RunObserver(Protocol):
    def run_started(self, run: RunStart) -> None: ...

    def attempt_started(
        self, number: int, total: int, spec: AttemptSpec, argv: Sequence[str]
    ) -> None: ...

    def progress(self, text: str) -> None: ...

    def attempt_finished(self, record: AttemptRecord) -> None: ...

    def run_finished(self, outcome: Outcome) -> None: ...


class BaseObserver:
    """No-op defaults, so an observer implements only what it cares about."""

    # ruff: noqa: ARG002 - the defaults ignore their arguments by design

    def run_started(self, run: RunStart) -> None:
        return None

    def attempt_started(
        self, number: int, total: int, spec: AttemptSpec, argv: Sequence[str]
    ) -> None:
        return None

    def progress(self, text: str) -> None:
        return None

    def attempt_finished(self, record: AttemptRecord) -> None:
        return None

    def run_finished(self, outcome: Outcome) -> None:
        return None


@dataclass
class Observers:
    """Fans every call out to each observer, containing their failures."""

    members: Sequence[RunObserver]
    warn: Warn
    _failed: set[int] = field(default_factory=set)

    def _each(self, call: Callable[[RunObserver], None]) -> None:
        for index, member in enumerate(self.members):
            if index in self._failed:
                continue
            try:
                call(member)
            except (NixbuildError, OSError) as exc:
                self._failed.add(index)
                self.warn(f"warning: {type(member).__name__} stopped working: {exc}")

    def run_started(self, run: RunStart) -> None:
        self._each(lambda m: m.run_started(run))

    def attempt_started(
        self, number: int, total: int, spec: AttemptSpec, argv: Sequence[str]
    ) -> None:
        self._each(lambda m: m.attempt_started(number, total, spec, argv))

    def progress(self, text: str) -> None:
        self._each(lambda m: m.progress(text))

    def attempt_finished(self, record: AttemptRecord) -> None:
        self._each(lambda m: m.attempt_finished(record))

    def run_finished(self, outcome: Outcome) -> None:
        self._each(lambda m: m.run_finished(outcome))


class LedgerObserver(BaseObserver):
    """Records the run and each attempt in the SQLite ledger (``nixbuild history``)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.run: int | None = None

    def run_started(self, run: RunStart) -> None:
        self.run = self.ledger.start_run(
            run_id=run.run_id,
            installable=run.installable,
            started_at=run.started_at,
            job=run.job,
            run_dir=run.run_dir,
            pid=os.getpid(),
            host=socket.gethostname(),
        )

    def attempt_finished(self, record: AttemptRecord) -> None:
        if self.run is not None:
            self.ledger.record_attempt(self.run, record)

    def run_finished(self, outcome: Outcome) -> None:
        if self.run is None:
            return
        summary = outcome.summary
        self.ledger.finish_run(
            self.run,
            status=outcome.status,
            exit_code=int(outcome.exit_code),
            variant=outcome.attempts[-1].spec.variant if outcome.attempts else None,
            finished_at=str(summary.get("finished_at")),
            duration_s=float(summary.get("duration_s", 0.0)),  # type: ignore[arg-type]
            outputs=list(outcome.outputs),
        )


class NotifyObserver(BaseObserver):
    """sd_notify for a ``Type=notify`` service: READY, STATUS= lines, WATCHDOG=1, STOPPING."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.prefix = ""
        self.cores = ""

    def run_started(self, run: RunStart) -> None:
        self.notifier.ready(f"run {run.run_id}: starting {run.installable}")

    def attempt_started(
        self, number: int, total: int, spec: AttemptSpec, argv: Sequence[str]
    ) -> None:
        self.prefix = f"attempt {number}/{total}"
        self.cores = f"cores {spec.cores}, max-jobs {spec.max_jobs}"
        self.notifier.status(f"{self.prefix}: starting {spec.installable}, {self.cores}")
        self.notifier.ping_watchdog_if_due()

    def progress(self, text: str) -> None:
        # e.g. "attempt 2/6: 412/1031 built, building python3.12-torch [buildPhase], 1h02m,
        # cores 4, max-jobs 1" — what `systemctl --user status` shows while it runs.
        self.notifier.status(f"{self.prefix}: {text}, {self.cores}" if self.prefix else text)
        self.notifier.ping_watchdog_if_due()

    def run_finished(self, outcome: Outcome) -> None:
        self.notifier.stopping(f"{outcome.status}, exit {int(outcome.exit_code)}")


class HookObserver(BaseObserver):
    """``--on-success CMD`` / ``--on-failure CMD``: run a shell command when the run ends.

    The command gets the outcome in its environment: NIXBUILD_STATUS, NIXBUILD_EXIT_CODE,
    NIXBUILD_SUMMARY (path of summary.json), NIXBUILD_RUN_DIR, NIXBUILD_INSTALLABLE.
    """

    def __init__(
        self, on_success: str | None, on_failure: str | None, warn: Warn, timeout_s: float = 300.0
    ) -> None:
        self.on_success = on_success
        self.on_failure = on_failure
        self.warn = warn
        self.timeout_s = timeout_s

    def run_finished(self, outcome: Outcome) -> None:
        succeeded = outcome.status in ("success", "fallback")
        command = self.on_success if succeeded else self.on_failure
        if not command:
            return
        env = dict(
            os.environ,
            NIXBUILD_STATUS=outcome.status,
            NIXBUILD_EXIT_CODE=str(int(outcome.exit_code)),
            NIXBUILD_SUMMARY=str(outcome.run_dir / "summary.json"),
            NIXBUILD_RUN_DIR=str(outcome.run_dir),
            NIXBUILD_INSTALLABLE=str(outcome.summary.get("installable")),
        )
        done = run_capture(["/bin/sh", "-c", command], env=env, timeout=self.timeout_s)
        if not done.ok:
            which = "on-success" if succeeded else "on-failure"
            detail = (done.stderr or done.stdout).strip().splitlines()
            self.warn(f"warning: {which} hook exited {done.status}: {detail[-1] if detail else ''}")
