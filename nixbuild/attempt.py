"""One attempt: start nix, fan its lines out, watch for reasons to stop it, diagnose.

Lines arrive in batches on the pipe readers' threads; ``LineFanout`` queues them for its
worker, where ``LineProcessor`` numbers them once and hands each to the attempt log, the
classifier and the console, so evidence line numbers always match ``attempt-N.log``.
The main thread meanwhile ticks the console, and stops the process group on a signal,
the deadline, a stall or the memory watchdog.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import nixcmd, policy, probe
from .console import Console, progress_text
from .logstream import LogState
from .model import (
    AttemptRecord,
    AttemptSpec,
    Diagnosis,
    Evidence,
    ExitInfo,
    Kind,
    LogLine,
    Mode,
    Source,
)
from .process import CommandNotFound, Supervised
from .redact import may_hold_secret, redact_argv, redact_line
from .rundir import RunFiles
from .summary import iso
from .watchdog import MemoryWatchdog

if TYPE_CHECKING:
    from .classify import Classifier

DEADLINE_REACHED = "deadline reached while building"


@dataclass(frozen=True, slots=True)
class AttemptSettings:
    """What every attempt of a run shares."""

    mode: Mode
    gcroot: Path | None  # None: no result link (e.g. `nix build --no-link`): exit 0 is success
    extra_args: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    stop_at: float | None = None  # wall-clock epoch seconds
    grace_s: float = 10.0
    stall_timeout_s: float | None = None
    watchdog_bytes: int | None = None  # None: no memory watchdog
    # Whether builders run in nixbuild's cgroup (a local store), so that its OOM-kill counter
    # can concern them; with the nix daemon they run in the daemon's cgroup instead.
    builders_in_our_cgroup: bool = True
    env: Mapping[str, str] | None = None
    # `nixbuild run`: the user's own command line, rebuilt for each attempt's parallelism.
    argv_for: Callable[[AttemptSpec], Sequence[str]] | None = None

    def argv(self, nix: nixcmd.NixInfo, spec: AttemptSpec) -> list[str]:
        if self.argv_for is not None:
            return list(self.argv_for(spec))
        if self.gcroot is None:
            raise ValueError("nixbuild's own commands always keep a GC root")
        return nixcmd.attempt_argv(
            nix, self.mode, spec, gcroot=self.gcroot, command=self.command, extra=self.extra_args
        )


class LineProcessor:
    """nix's raw lines → human lines: numbered, redacted, logged, classified, shown.

    Works a batch at a time: a batch of build output almost never holds anything to redact,
    so one check of the joined text replaces one per line, and the attempt log gets one
    write. The benchmarks run this same code (tests/perf/_common.py).
    """

    def __init__(self, files: RunFiles, console: Console, state: LogState | None = None) -> None:
        # Imported here: the classifier's patterns take ≈25 ms to compile, and LineFanout
        # builds its processor on its own thread, while nix starts (see _drain).
        from .classify import Classifier  # noqa: PLC0415

        self.files = files
        self.console = console
        self.state = state or LogState()
        self.classifier = Classifier()
        self.lines = 0

    def process(self, batch: Sequence[str], now: float) -> None:
        human = self.state.apply_lines(batch)
        if not human:
            return
        texts = [produced.text for produced in human]
        joined = "\n".join(texts)
        if may_hold_secret(joined):
            texts = [redact_line(text) for text in texts]
            joined = "\n".join(texts)
        self.files.attempt_line(joined)
        feed, show = self.classifier.feed_text, self.console.log_text
        number = self.lines
        for produced, text in zip(human, texts, strict=True):
            number += 1
            feed(number, text, produced.source, produced.drv)
            show(text, produced.source, now)
        self.lines = number


def _unknown() -> int | None:
    return None


class LineFanout:
    """Receives nix's raw lines and fans them out, in order, on a worker thread of its own.

    The pipe readers (process.py) only queue each batch of lines, so nix's pipe is drained
    as fast as it fills and a chatty builder is not held up by parsing and classification.
    A sustained flood beyond ``backlog`` queued lines makes the readers wait for the worker
    to catch up, which bounds memory (about 200 bytes a line).

    The worker runs at nixbuild's own priority, on purpose. At nice +10 it was meant to
    leave more CPU to a flooding builder, which ran 1.2-1.3x as long as with nix logging to
    /dev/null either way (measurements too noisy to tell them apart), but a thread that
    holds the GIL must not be the one the kernel runs last: preempted while holding it, it
    kept the readers waiting until nix's pipe was nearly full (largest read 800-1012 KiB of
    1 MiB, against 150-230 KiB at equal priority). That nix never blocks comes first.
    """

    def __init__(
        self,
        files: RunFiles,
        console: Console,
        clock: Callable[[], float],
        backlog: int = 50_000,
    ) -> None:
        self.files = files
        self.console = console
        self.state = LogState()
        self._processor: LineProcessor | None = None
        self._ready = threading.Event()
        self.clock = clock
        self.last_activity = clock()
        self.backlog = backlog
        self._queue: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self._queued = 0  # lines queued and not yet processed
        self.readers_waited_s = 0.0  # how long the pipe readers waited for the worker
        self._count_lock = threading.Lock()  # two pipe readers and the worker update it
        # The thread starts now (so a failure to start one comes before nix runs), but it
        # waits for ``start`` before its first job: importing and compiling the classifier
        # (≈15 ms of Python) then overlaps nix's start instead of competing with the main
        # thread for the GIL while it starts nix.
        self._go = threading.Event()
        self._worker = threading.Thread(target=self._drain, name="log-fanout", daemon=True)
        self._worker.start()

    def start(self) -> None:
        """Let the worker begin; call it once nix is running (lines fed before wait)."""
        self._go.set()

    def feed(self, lines: list[str]) -> None:
        """Called on the pipe readers' threads: hand the lines over; wait only in a flood."""
        self.last_activity = self.clock()
        with self._count_lock:
            self._queued += len(lines)
        self._queue.put(lines)
        if self._queued > self.backlog:
            started = time.monotonic()
            while (
                self._queued > self.backlog // 2 and self._go.is_set() and self._worker.is_alive()
            ):
                time.sleep(0.005)
            self.readers_waited_s += time.monotonic() - started

    def close(self) -> None:
        """After nix has exited: process every line still queued, then stop the worker."""
        self.start()  # a run where nix could not start has lines too
        self._queue.put(None)
        self._worker.join()

    @property
    def processor(self) -> LineProcessor:
        self._ready.wait()
        if self._processor is None:
            raise RuntimeError("the log fan-out worker failed to start")
        return self._processor

    @property
    def classifier(self) -> Classifier:
        return self.processor.classifier

    @property
    def lines(self) -> int:
        return self.processor.lines

    def _drain(self) -> None:
        self._go.wait()
        # Built on this thread: the classifier's set-up then overlaps nix's start.
        try:
            self._processor = LineProcessor(self.files, self.console, self.state)
        finally:
            self._ready.set()  # even on failure: the processor property must not hang
        while (batch := self._queue.get()) is not None:
            self._processor.process(batch, self.clock())
            with self._count_lock:
                self._queued -= len(batch)


class Attempt:
    def __init__(
        self,
        settings: AttemptSettings,
        nix: nixcmd.NixInfo,
        console: Console,
        files: RunFiles,
        *,
        clock: Callable[[], float],
        interrupted: Callable[[], int | None],
        progress: Callable[[str], None],
        tick_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.nix = nix
        self.console = console
        self.files = files
        self.clock = clock
        self.interrupted = interrupted
        self.progress = progress
        self.tick_s = tick_s
        self._tripped: str | None = None

    def run(
        self, number: int, spec: AttemptSpec, announce: Callable[[Sequence[str]], None]
    ) -> AttemptRecord:
        """Run one attempt; ``announce(argv)`` is called once its command line is known."""
        cfg = self.settings
        argv = cfg.argv(self.nix, spec)
        shown = redact_argv(argv)  # what is recorded anywhere: tokens never reach a file
        self.files.add_command(number, shown)
        log_name = self.files.open_attempt(number)
        started = self.clock()
        announce(shown)
        self.files.event(
            "attempt_started",
            attempt=number,
            argv=shown,
            cores=spec.cores,
            max_jobs=spec.max_jobs,
            installable=spec.installable,
            variant=str(spec.variant),
        )
        fanout = LineFanout(self.files, self.console, self.clock)
        external: list[LogLine] = []
        watchdog = self._watchdog()
        try:
            proc = Supervised(argv, on_stdout=fanout.feed, on_stderr=fanout.feed, env=cfg.env)
            fanout.start()
        except (OSError, CommandNotFound) as exc:
            fanout.feed([f"nixbuild: could not start nix: {exc}"])
            status: int | None = 127
            sig: int | None = None
        else:
            status, sig, stop_reason = self._watch(proc, fanout, started)
            if stop_reason is not None:
                external.append(LogLine(0, stop_reason, Source.EXTERNAL))
            # Whether nix ever had to wait for nixbuild: a full pipe, or readers held back
            # by the worker (tests/perf/bench_throughput.py reports these for a flood).
            self.files.event(
                "log_reading",
                pipe_peak_bytes=proc.pipe_peak_bytes,
                pipe_capacity_bytes=proc.pipe_capacity_bytes,
                readers_waited_s=round(fanout.readers_waited_s, 3),
            )
        finally:
            fanout.close()
            self.console.done()
            if watchdog is not None:
                watchdog.stop()
        if watchdog is not None and (report := watchdog.oom_kill_report()):
            external.append(LogLine(0, report, Source.EXTERNAL))
        diagnosis = self._diagnose(fanout, ExitInfo(status, sig, self.interrupted()), external)
        outputs = _outputs(cfg.gcroot, cfg.mode) if status == 0 and cfg.gcroot else ()
        if diagnosis is None and cfg.gcroot is not None and not outputs:
            diagnosis = Diagnosis(
                Kind.UNKNOWN,
                "unknown.no-output",
                f"nix reported success but {cfg.gcroot} does not point into the store",
                (Evidence(0, str(cfg.gcroot)),),
            )
        self.files.close_attempt()
        return AttemptRecord(
            number,
            spec,
            shown,
            iso(started),
            round(self.clock() - started, 3),
            status,
            log_name,
            diagnosis,
            None,
            outputs,
        )

    def _watchdog(self) -> MemoryWatchdog | None:
        if self.settings.watchdog_bytes is None:
            return None
        self._tripped = None

        def trip(evidence: str) -> None:
            self._tripped = evidence

        # Daemon builds: our cgroup's OOM kills are never theirs, so the counter is not read.
        counter = probe.read_oom_kill_count if self.settings.builders_in_our_cgroup else _unknown
        return MemoryWatchdog(self.settings.watchdog_bytes, trip, read_oom_kills=counter).start()

    def _diagnose(
        self, fanout: LineFanout, exit_info: ExitInfo, external: Sequence[LogLine]
    ) -> Diagnosis | None:
        diagnosis = fanout.classifier.finish(exit_info, external)
        signum = self.interrupted()
        if signum is not None:
            return policy.interruption(signum)
        if any(line.text == DEADLINE_REACHED for line in external):
            return Diagnosis(
                Kind.TIMEOUT,
                "timeout.deadline",
                "the run's deadline was reached and nix was stopped",
                tuple(Evidence(0, e.text) for e in external),
            )
        if diagnosis is None and exit_info.status != 0:
            return Diagnosis(
                Kind.UNKNOWN,
                "unknown.nonzero-exit",
                f"nix exited with status {exit_info.status} and no recognisable error",
            )
        return diagnosis

    def _watch(
        self, proc: Supervised, fanout: LineFanout, started: float
    ) -> tuple[int | None, int | None, str | None]:
        """Wait for nix, ticking the console; stop it when a reason to stop appears."""
        stop_reason: str | None = None
        while True:
            status, sig = proc.wait(timeout=self.tick_s)
            if status is not None or sig is not None:
                return status, sig, stop_reason
            now = self.clock()
            if stop_reason is None:
                stop_reason = self._stop_reason(now, fanout)
                if stop_reason is not None:
                    self.console.say(f"nixbuild: {stop_reason}; stopping nix", now)
                    proc.stop(self.settings.grace_s)
                    continue
            self.console.tick(fanout.state, now - started, now)
            self.progress(progress_text(fanout.state, now - started))

    def _stop_reason(self, now: float, fanout: LineFanout) -> str | None:
        cfg = self.settings
        signum = self.interrupted()
        if signum is not None:
            return f"received {signal.Signals(signum).name}"
        if self._tripped is not None:
            return self._tripped
        if cfg.stop_at is not None and now >= cfg.stop_at:
            return DEADLINE_REACHED
        if cfg.stall_timeout_s is not None and now - fanout.last_activity >= cfg.stall_timeout_s:
            return f"stall detector: no output for {int(now - fanout.last_activity)} s"
        return None


def _outputs(gcroot: Path, mode: Mode) -> tuple[str, ...]:
    """Store paths the GC root(s) point at: success is decided from the store, not the log.

    ``nix build`` adds ``result-dev``-style links for further outputs; a develop profile
    is one link (its ``-N-link`` generations are not outputs).
    """
    candidates = [gcroot]
    if mode is Mode.BUILD:
        candidates += sorted(gcroot.parent.glob(gcroot.name + "-*"))
    return tuple(
        os.path.realpath(link) for link in candidates if link.is_symlink() and link.exists()
    )
