"""The attempt loop: run nix, watch it, classify a failure, decide, wait, go again.

Everything here that is not starting a process (process.py) or sleeping is delegated to
pure functions: nixcmd builds the argv, logstream folds the stream, classify explains a
failure, policy decides what next. Time and sleep are injected so tests take milliseconds.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from . import nixcmd, policy
from .classify import Classifier
from .console import Console, format_elapsed
from .errors import ExitCode
from .logstream import LogState, parse_line
from .model import (
    AttemptRecord,
    AttemptSpec,
    Decision,
    Diagnosis,
    Evidence,
    ExitInfo,
    Kind,
    LogLine,
    Mode,
    Source,
    Variant,
)
from .process import Supervised
from .rundir import RunFiles, create_run_dir, new_run_id

SUMMARY_SCHEMA = 1


@dataclass(frozen=True, slots=True)
class RunRequest:
    mode: Mode
    first: AttemptSpec
    log_dir: Path
    gcroot: Path
    extra_args: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    job: str | None = None
    policy: policy.PolicyConfig = field(default_factory=policy.PolicyConfig)
    stop_at: float | None = None  # wall-clock epoch seconds: deadline / max duration
    grace_s: float = 10.0
    stall_timeout_s: float | None = None
    env: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    run_id: str
    run_dir: Path
    status: str  # success | fallback | failed | interrupted
    exit_code: ExitCode
    attempts: tuple[AttemptRecord, ...]
    outputs: tuple[str, ...]
    summary: dict[str, object]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


class Supervisor:
    def __init__(
        self,
        request: RunRequest,
        nix: nixcmd.NixInfo,
        console: Console,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
        tick_s: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.rng = rng or random.Random()
        self.request = request
        self.nix = nix
        self.console = console
        self.clock = clock
        self._wake = threading.Event()
        self.sleep = sleep or (lambda s: self._wake.wait(max(0.0, s)) and None)
        self.tick_s = tick_s
        self.interrupted_by: int | None = None
        self._proc: Supervised | None = None

    # -- signals ---------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only record it here; the main loop stops the process group (no work in handlers).
        if self.interrupted_by is None:
            self.interrupted_by = signum
        self._wake.set()

    def run(self) -> Outcome:
        main_thread = threading.current_thread() is threading.main_thread()
        previous = {}
        if main_thread:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            return self._run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # -- the loop ----------------------------------------------------------------------
    def _run(self) -> Outcome:
        req = self.request
        started = self.clock()
        run_id = new_run_id(datetime.fromtimestamp(started))
        run_dir = create_run_dir(req.log_dir, run_id)
        files = RunFiles(run_dir, lambda text: self.console.say(text, self.clock()))
        files.event("run_started", run_id=run_id, job=req.job, installable=req.first.installable)
        self.console.say(f"nixbuild: run {run_id}, logs in {run_dir}", started)

        history: list[AttemptRecord] = []
        spec: AttemptSpec | None = req.first
        total = req.policy.max_attempts
        while spec is not None:
            if self.interrupted_by is not None:
                break
            if req.stop_at is not None and self.clock() >= req.stop_at:
                self.console.say("nixbuild: deadline reached, no further attempt", self.clock())
                break
            record = self._attempt(len(history) + 1, total, spec, files)
            if record.diagnosis is None:
                history.append(record)
                break
            decision = self._decide(record.diagnosis, history, spec)
            record = replace(record, decision=decision)
            history.append(record)
            line = policy.decision_line(record, total)
            self.console.say(line, self.clock())
            files.event(
                "attempt_decided", attempt=record.number, decision=decision.to_json(), line=line
            )
            spec = self._prepare_next(decision)
        return self._finish(run_id, run_dir, files, started, history)

    def _decide(
        self, diagnosis: Diagnosis, history: Sequence[AttemptRecord], spec: AttemptSpec
    ) -> Decision:
        stop_at = self.request.stop_at
        if stop_at is not None and self.clock() >= stop_at:
            return Decision(policy.GIVE_UP, reason="the run's deadline has passed")
        return policy.decide(diagnosis, history, spec, self.request.policy, self.rng)

    def _prepare_next(self, decision: Decision) -> AttemptSpec | None:
        if decision.action == "give_up" or decision.next is None:
            return None
        if decision.delay_s > 0:
            self.sleep(decision.delay_s)
        return None if self.interrupted_by is not None else decision.next

    def _attempt(
        self, number: int, total: int, spec: AttemptSpec, files: RunFiles
    ) -> AttemptRecord:
        req = self.request
        argv = nixcmd.attempt_argv(
            self.nix, req.mode, spec, gcroot=req.gcroot, command=req.command, extra=req.extra_args
        )
        files.add_command(number, argv)
        log_name = files.open_attempt(number)
        started = self.clock()
        self.console.say(
            f"attempt {number}/{total}: nix {req.mode} {spec.installable} "
            f"(cores {spec.cores}, max-jobs {spec.max_jobs})",
            started,
        )
        files.event(
            "attempt_started",
            attempt=number,
            argv=argv,
            cores=spec.cores,
            max_jobs=spec.max_jobs,
            installable=spec.installable,
            variant=str(spec.variant),
        )
        watcher = _AttemptWatcher(files, self.console, self.clock)
        external: list[LogLine] = []
        try:
            proc = Supervised(argv, on_stdout=watcher.feed, on_stderr=watcher.feed, env=req.env)
        except OSError as exc:
            watcher.feed(f"nixbuild: could not start nix: {exc}")
            status: int | None = 127
            sig: int | None = None
        else:
            self._proc = proc
            status, sig, stop_reason = self._watch(proc, watcher, started)
            if stop_reason is not None:
                external.append(LogLine(0, stop_reason, Source.EXTERNAL))
        finally:
            self.console.done()
        exit_info = ExitInfo(status, sig, self.interrupted_by)
        diagnosis = watcher.classifier.finish(exit_info, external)
        if self.interrupted_by is not None:
            diagnosis = policy.interruption(self.interrupted_by)
        elif stop_reason_is_deadline(external):
            diagnosis = Diagnosis(
                Kind.TIMEOUT,
                "timeout.deadline",
                "the run's deadline was reached and nix was stopped",
                tuple(Evidence(0, e.text) for e in external),
            )
        outputs = _outputs(req.gcroot, req.mode) if status == 0 else ()
        if diagnosis is None and status != 0:
            diagnosis = Diagnosis(
                Kind.UNKNOWN,
                "unknown.nonzero-exit",
                f"nix exited with status {status} and no recognisable error",
            )
        if diagnosis is None and not outputs:
            diagnosis = Diagnosis(
                Kind.UNKNOWN,
                "unknown.no-output",
                f"nix reported success but {req.gcroot} does not point into the store",
                (Evidence(0, str(req.gcroot)),),
            )
        files.close_attempt()
        duration = self.clock() - started
        record = AttemptRecord(
            number,
            spec,
            tuple(argv),
            _iso(started),
            round(duration, 3),
            status,
            log_name,
            diagnosis,
            None,
            outputs,
        )
        self._report_attempt(record, files)
        return record

    def _watch(
        self, proc: Supervised, watcher: _AttemptWatcher, started: float
    ) -> tuple[int | None, int | None, str | None]:
        """Wait for nix, ticking the console; stop it on a signal, the deadline or a stall."""
        req = self.request
        stop_reason: str | None = None
        while True:
            status, sig = proc.wait(timeout=self.tick_s)
            if status is not None or sig is not None:
                return status, sig, stop_reason
            now = self.clock()
            if stop_reason is None:
                stop_reason = self._should_stop(now, watcher)
                if stop_reason is not None:
                    self.console.say(f"nixbuild: {stop_reason}; stopping nix", now)
                    proc.stop(req.grace_s)
                    continue
            self.console.tick(watcher.state, now - started, now)

    def _should_stop(self, now: float, watcher: _AttemptWatcher) -> str | None:
        req = self.request
        if self.interrupted_by is not None:
            return f"received {signal.Signals(self.interrupted_by).name}"
        if req.stop_at is not None and now >= req.stop_at:
            return DEADLINE_REACHED
        if req.stall_timeout_s is not None and now - watcher.last_activity >= req.stall_timeout_s:
            silent = format_elapsed(now - watcher.last_activity)
            return f"stall detector: no output and no progress for {silent}"
        return None

    def _report_attempt(self, record: AttemptRecord, files: RunFiles) -> None:
        diag = record.diagnosis
        now = self.clock()
        if diag is None:
            self.console.say(
                f"attempt {record.number} succeeded in {format_elapsed(record.duration_s)}", now
            )
            files.event("attempt_succeeded", attempt=record.number, outputs=list(record.outputs))
            return
        where = f" in {diag.drv}" if diag.drv else ""
        self.console.say(
            f"diagnosis: {diag.kind} (rule {diag.rule}){where}: {diag.explanation}", now
        )
        for ev in diag.evidence[:3]:
            self.console.say(f"  evidence {record.log}:{ev.line}: {ev.text}", now)
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
        finished = self.clock()
        last = history[-1] if history else None
        succeeded = last is not None and last.diagnosis is None
        if succeeded and last is not None:
            status = "fallback" if last.spec.variant is Variant.BIN else "success"
        elif self.interrupted_by is not None:
            status = "interrupted"
        else:
            status = "failed"
        exit_code = policy.exit_code_for(history, succeeded)
        if len(history) == 1 and _installable_missing(history[0].diagnosis):
            exit_code = ExitCode.USAGE
        outputs = last.outputs if succeeded and last is not None else ()
        summary = build_summary(
            run_id,
            self.request,
            status=status,
            exit_code=exit_code,
            started=started,
            finished=finished,
            history=history,
            outputs=outputs,
        )
        files.write_summary(summary)
        files.event("run_finished", status=status, exit_code=int(exit_code), outputs=list(outputs))
        files.close()
        return Outcome(run_id, run_dir, status, exit_code, tuple(history), outputs, summary)


class _AttemptWatcher:
    """Receives nix's lines (from sh's reader threads) and fans them out, in order."""

    def __init__(self, files: RunFiles, console: Console, clock: Callable[[], float]) -> None:
        self.files = files
        self.console = console
        self.clock = clock
        self.state = LogState()
        self.classifier = Classifier()
        self.lines = 0
        self.last_activity = time.time() if clock is time.time else clock()
        self._lock = threading.Lock()

    def feed(self, raw: str) -> None:
        with self._lock:
            now = self.clock()
            self.last_activity = now
            for produced in self.state.apply(parse_line(raw)):
                self.lines += 1
                line = LogLine(self.lines, produced.text, produced.source, produced.drv)
                self.files.attempt_line(line.text)
                self.classifier.feed(line)
                self.console.log_line(line, now)


def _installable_missing(diagnosis: Diagnosis | None) -> bool:
    if diagnosis is None or diagnosis.kind not in (Kind.EVAL, Kind.UNKNOWN):
        return False
    return nixcmd.names_missing_installable([e.text for e in diagnosis.evidence]) is not None


DEADLINE_REACHED = "deadline reached while building"


def stop_reason_is_deadline(external: Sequence[LogLine]) -> bool:
    return any(line.text == DEADLINE_REACHED for line in external)


def _outputs(gcroot: Path, mode: Mode) -> tuple[str, ...]:
    """Store paths the GC root(s) point at: success is decided from the store, not the log.

    ``nix build`` adds ``result-dev``-style links for further outputs; a develop profile
    is one link (its ``-N-link`` generations are not outputs).
    """
    candidates = [gcroot]
    if mode is Mode.BUILD:
        candidates += sorted(gcroot.parent.glob(gcroot.name + "-*"))
    found = []
    for link in candidates:
        if link.is_symlink() and link.exists():
            found.append(os.path.realpath(link))
    return tuple(found)


def build_summary(
    run_id: str,
    req: RunRequest,
    *,
    status: str,
    exit_code: ExitCode,
    started: float,
    finished: float,
    history: Sequence[AttemptRecord],
    outputs: Sequence[str],
) -> dict[str, object]:
    last = history[-1] if history else None
    return {
        "schema": SUMMARY_SCHEMA,
        "run_id": run_id,
        "job": req.job,
        "installable": req.first.installable,
        "mode": str(req.mode),
        "status": status,
        "exit_code": int(exit_code),
        "variant": str(last.spec.variant) if last else str(req.first.variant),
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "duration_s": round(finished - started, 3),
        "gcroot": str(req.gcroot),
        "outputs": list(outputs),
        "attempts": [_attempt_json(r) for r in history],
    }


def _attempt_json(r: AttemptRecord) -> dict[str, object]:
    return {
        "number": r.number,
        "installable": r.spec.installable,
        "variant": str(r.spec.variant),
        "cores": r.spec.cores,
        "max_jobs": r.spec.max_jobs,
        "command": list(r.command),
        "started_at": r.started_at,
        "duration_s": r.duration_s,
        "exit_status": r.exit_status,
        "diagnosis": r.diagnosis.to_json() if r.diagnosis else None,
        "decision": r.decision.to_json() if r.decision else None,
        "log": r.log,
    }
