"""The attempt loop: run nix, diagnose a failure, decide, recover, wait, go again.

Everything that is not starting a process (process.py) or waiting is delegated: attempt.py
runs and diagnoses one attempt, policy decides what next, recovery collects garbage and
waits for memory, observers record the run. Time and sleep are injected so tests of the
loop take milliseconds.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import TextIO

from . import nixcmd, policy, probe, recovery
from .attempt import Attempt, AttemptSettings
from .console import Console, format_elapsed
from .decisiontext import decision_line, format_seconds
from .errors import ExitCode
from .model import AttemptRecord, AttemptSpec, Decision, Diagnosis, Kind, Variant
from .nixfacts import store_dir
from .observers import Observers, RunObserver, RunStart
from .rundir import RunFiles, create_run_dir, new_run_id
from .summary import Outcome, build_summary, iso


@dataclass(frozen=True, slots=True)
class RunRequest:
    first: AttemptSpec
    log_dir: Path
    attempt: AttemptSettings
    job: str | None = None
    policy: policy.PolicyConfig = field(default_factory=policy.PolicyConfig)
    fail_on_fallback: bool = False  # a build that only succeeded as -bin exits 1
    # `nixbuild run -- nix develop … -c CMD`: CMD runs once after the shell is built; its
    # failure fails the run (reports, ledger, hooks all see it) but is never retried.
    after_success: Callable[[Callable[[], int | None]], int] | None = None
    # A derived `-bin` fallback (not named by the user) is checked when first needed.
    verify_fallback: Callable[[str], bool] | None = None


class Supervisor:
    def __init__(
        self,
        request: RunRequest,
        nix: nixcmd.NixInfo,
        console: Console,
        *,
        observers: Sequence[RunObserver] = (),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
        read_available: Callable[[], int] = probe.available_memory,
        tick_s: float = 1.0,
        rng: random.Random | None = None,
        attempt_lines: bool = True,
        journal: TextIO | None = None,
    ) -> None:
        self.journal = journal
        # False when a CI renderer prints each attempt's outcome (diagnosis, evidence,
        # decision) in its own format: the same facts twice would only confuse.
        self.attempt_lines = attempt_lines
        self.request = request
        self.nix = nix
        self.console = console
        self.clock = clock
        self._wake = threading.Event()
        self.sleep = sleep or self._interruptible_sleep
        self.read_available = read_available
        self.tick_s = tick_s
        self.rng = rng or random.Random()
        self.interrupted_by: int | None = None
        self.deadline_reached = False
        # What a wait is for, when it is not a plain pause: the status line shows it.
        self._waiting_for: str | None = None
        self.observers = Observers(observers, self._warn)

    def _warn(self, text: str) -> None:
        self.console.say(text, self.clock())

    def _interruptible_sleep(self, seconds: float) -> None:
        """Wait, waking at once on a signal, and keep systemd's watchdog and STATUS fed."""
        deadline = time.monotonic() + max(0.0, seconds)
        while (left := deadline - time.monotonic()) > 0 and not self._wake.is_set():
            waiting = self._waiting_for or f"{format_seconds(left)} before the next attempt"
            self.observers.progress(f"waiting {waiting}")
            self._wake.wait(min(left, 30.0))

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only record it here; the loop stops the process group (no work in handlers).
        if self.interrupted_by is None:
            self.interrupted_by = signum
        self._wake.set()

    def run(self) -> Outcome:
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                # Under nohup SIGHUP is ignored, as the user asked: the build goes on.
                if sig != signal.SIGHUP or signal.getsignal(sig) is not signal.SIG_IGN:
                    previous[sig] = signal.signal(sig, self._on_signal)
        try:
            return self._run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self) -> Outcome:
        req = self.request
        started = self.clock()
        run_id = new_run_id(datetime.fromtimestamp(started))
        run_dir = create_run_dir(req.log_dir, run_id)
        files = RunFiles(run_dir, self._warn, journal=self.journal)
        files.event(
            "run_started",
            run_id=run_id,
            job=req.job,
            installable=req.first.installable,
            nix_version=self.nix.label or ".".join(map(str, self.nix.version)),
        )
        self.console.say(f"nixbuild: run {run_id}, logs in {run_dir}", started)
        self.observers.run_started(
            RunStart(run_id, str(run_dir), req.job, req.first.installable, iso(started))
        )
        attempt = Attempt(
            req.attempt,
            self.nix,
            self.console,
            files,
            clock=self.clock,
            interrupted=lambda: self.interrupted_by,
            progress=self.observers.progress,
            tick_s=self.tick_s,
        )
        history: list[AttemptRecord] = []
        spec: AttemptSpec | None = req.first
        total = req.policy.max_attempts
        while spec is not None and self.interrupted_by is None:
            if req.attempt.stop_at is not None and self.clock() >= req.attempt.stop_at:
                self.deadline_reached = True
                self._warn("nixbuild: deadline reached, no further attempt")
                break
            baseline = self._available()
            record = attempt.run(len(history) + 1, spec, self._announcer(len(history) + 1, spec))
            self._report_attempt(record, files)
            if record.diagnosis is None:
                history.append(record)
                self.observers.attempt_finished(record)
                break
            kind = record.diagnosis.kind
            decision = self._decide(record.diagnosis, history, spec)
            record = replace(record, decision=decision)
            history.append(record)
            self.observers.attempt_finished(record)
            line = decision_line(record, total)
            self._say_attempt(line)
            files.event(
                "attempt_decided", attempt=record.number, decision=decision.to_json(), line=line
            )
            spec = self._prepare_next(decision, kind, baseline, files)
        return self._finish(run_id, run_dir, files, started, history)

    def _announcer(self, number: int, spec: AttemptSpec) -> Callable[[Sequence[str]], None]:
        total = self.request.policy.max_attempts

        def announce(argv: Sequence[str]) -> None:
            self._say_attempt(
                f"attempt {number}/{total}: nix {self.request.attempt.mode} {spec.installable} "
                f"(cores {spec.cores}, max-jobs {spec.max_jobs})"
            )
            self.observers.attempt_started(number, total, spec, argv)

        return announce

    def _available(self) -> int | None:
        try:
            return self.read_available()
        except OSError:
            return None

    def _decide(
        self, diagnosis: Diagnosis, history: Sequence[AttemptRecord], spec: AttemptSpec
    ) -> Decision:
        stop_at = self.request.attempt.stop_at
        if stop_at is not None and self.clock() >= stop_at:
            self.deadline_reached = True
            return Decision(policy.GIVE_UP, reason="the run's deadline has passed")
        free_gb = None
        if diagnosis.kind is Kind.DISK:
            free_gb = recovery.free_space_gb(store_dir())
        decision = policy.decide(
            diagnosis, history, spec, self.request.policy, self.rng, free_space_gb=free_gb
        )
        if (
            decision.action != policy.GIVE_UP
            and stop_at is not None
            and self.clock() + decision.delay_s >= stop_at
        ):
            # Do not sleep past the deadline only to give up then: say so now.
            self.deadline_reached = True
            return Decision(
                policy.GIVE_UP,
                reason=f"the next attempt ({decision.action}) would start after the deadline",
            )
        if decision.action == policy.FALLBACK and decision.next is not None:
            return self._checked_fallback(decision, decision.next.installable)
        return decision

    def _checked_fallback(self, decision: Decision, installable: str) -> Decision:
        verify = self.request.verify_fallback
        if verify is None:
            return decision
        if verify(installable):
            self._warn(f"nixbuild: the derived fallback {installable} exists")
            return decision
        return Decision(
            policy.GIVE_UP,
            reason=f"the derived fallback {installable} does not exist (nix eval found nothing)",
        )

    def _prepare_next(
        self, decision: Decision, kind: Kind, baseline: int | None, files: RunFiles
    ) -> AttemptSpec | None:
        """Do what the decision needs before the next attempt: wait, collect, settle."""
        if decision.action == policy.GIVE_UP or decision.next is None:
            return None
        memory = policy.memory_wait(kind, decision)
        if memory is not None:
            self._wait_for_memory(memory, baseline, files)
        elif decision.delay_s > 0:
            self.sleep(decision.delay_s)
        if decision.action == policy.GC_THEN_RETRY:
            self._warn(f"nixbuild: collecting garbage in {store_dir()}")
            result = recovery.collect_garbage(self.nix, store_dir())
            self._warn(f"nixbuild: {result.message}")
            files.event("garbage_collected", ok=result.ok, message=result.message)
        return None if self.interrupted_by is not None else decision.next

    def _wait_for_memory(
        self, wait: policy.MemoryWait, baseline: int | None, files: RunFiles
    ) -> None:
        """After out-of-memory: poll until available memory is back (``baseline`` is the
        reading before the failed attempt), at most ``wait.max_s``."""
        target = None if baseline is None else int(baseline * wait.fraction)
        self._waiting_for = f"for memory to come back (at most {format_seconds(wait.max_s)})"
        try:
            result = recovery.wait_for_memory(
                target,
                read_available=self.read_available,
                sleep=self.sleep,
                clock=self.clock,
                max_wait_s=wait.max_s,
                min_wait_s=wait.min_s,
                poll_s=wait.poll_s,
                readings=wait.readings,
                interrupted=lambda: self.interrupted_by is not None,
            )
        finally:
            self._waiting_for = None
        files.event(
            "memory_wait",
            waited_s=round(result.waited_s, 3),
            recovered=result.recovered,
            available=result.available,
            target=target,
        )
        if result.recovered is False and self.interrupted_by is None:
            self._warn(
                f"nixbuild: memory has not recovered after {format_seconds(wait.max_s)} "
                "(oom_delay); starting anyway"
            )

    def _say_attempt(self, text: str) -> None:
        if self.attempt_lines:
            self._warn(text)

    def _report_attempt(self, record: AttemptRecord, files: RunFiles) -> None:
        diag = record.diagnosis
        if diag is None:
            self._say_attempt(
                f"attempt {record.number} succeeded in {format_elapsed(record.duration_s)}"
            )
            files.event("attempt_succeeded", attempt=record.number, outputs=list(record.outputs))
            return
        where = f" in {diag.drv}" if diag.drv else ""
        self._say_attempt(f"diagnosis: {diag.kind} (rule {diag.rule}){where}: {diag.explanation}")
        for ev in diag.evidence[:3]:
            self._say_attempt(f"  evidence {record.log}:{ev.line}: {ev.text}")
        files.event(
            "attempt_failed",
            attempt=record.number,
            exit_status=record.exit_status,
            diagnosis=diag.to_json(),
        )

    def _finish(
        self,
        run_id: str,
        run_dir: Path,
        files: RunFiles,
        started: float,
        history: Sequence[AttemptRecord],
    ) -> Outcome:
        last = history[-1] if history else None
        succeeded = last is not None and last.diagnosis is None
        command_failed = False
        command_status: int | None = None
        if succeeded and self.request.after_success is not None:
            command_status = self.request.after_success(lambda: self.interrupted_by)
            files.event("command_finished", exit_status=command_status)
            command_failed = command_status != 0
            succeeded = not command_failed
        finished = self.clock()
        if succeeded and last is not None:
            status = "fallback" if last.spec.variant is Variant.BIN else "success"
        elif self.interrupted_by is not None:
            status = "interrupted"
        else:
            status = "failed"
        exit_code = policy.exit_code_for(history, succeeded)
        if not succeeded and self.interrupted_by is not None:
            exit_code = policy.signal_exit_code(self.interrupted_by)
        if len(history) == 1 and _installable_missing(history[0].diagnosis):
            exit_code = ExitCode.USAGE
        if self.deadline_reached and exit_code == ExitCode.FAILED and not succeeded:
            # Not a verdict on the build: time ran out. A later run may well finish it.
            exit_code = ExitCode.TRANSIENT
        if (command_failed and self.interrupted_by is None) or (
            status == "fallback" and self.request.fail_on_fallback
        ):
            exit_code = ExitCode.FAILED
        outputs = last.outputs if succeeded and last is not None else ()
        req = self.request
        summary = build_summary(
            run_id,
            req.job,
            req.attempt.mode,
            req.first,
            req.attempt.gcroot,
            status=status,
            exit_code=exit_code,
            started=started,
            finished=finished,
            history=history,
            outputs=outputs,
            command_exit_status=command_status,
        )
        files.write_summary(summary)
        files.event("run_finished", status=status, exit_code=int(exit_code), outputs=list(outputs))
        files.close()
        outcome = Outcome(run_id, run_dir, status, exit_code, tuple(history), outputs, summary)
        self.observers.run_finished(outcome)
        return outcome


def _installable_missing(diagnosis: Diagnosis | None) -> bool:
    """Nix said the installable itself does not exist: the user's input error (exit 2)."""
    if diagnosis is None or diagnosis.kind not in (Kind.EVAL, Kind.UNKNOWN):
        return False
    return nixcmd.names_missing_installable([e.text for e in diagnosis.evidence]) is not None
