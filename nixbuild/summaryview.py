"""A tolerant, typed view of the run summary dict, and the wording every report shares.

The run summary (``summary.json``, schema 1 in the design notes) is a plain dict written by
the supervisor, maybe by an older version, maybe cut short by a crash. ``read_summary`` turns
it into frozen dataclasses where a missing or mistyped optional key becomes None or empty, so
no renderer (report.py, ciformat.py) ever has to guard a lookup or can crash on one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .model import waits_for_memory

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
# Other control characters (BEL, backspace, a stray ESC…): a report shows none of them.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


# --- a tolerant, typed view of the summary dict ---------------------------------------


@dataclass(frozen=True, slots=True)
class EvidenceView:
    line: int | None
    text: str


@dataclass(frozen=True, slots=True)
class DiagnosisView:
    kind: str
    rule: str
    explanation: str
    drv: str | None
    evidence: tuple[EvidenceView, ...]


@dataclass(frozen=True, slots=True)
class DecisionView:
    action: str
    delay_s: float | None
    reason: str
    next_installable: str | None
    next_variant: str | None
    next_cores: int | None
    next_max_jobs: int | None


@dataclass(frozen=True, slots=True)
class AttemptView:
    number: int
    installable: str
    variant: str
    cores: int | None
    max_jobs: int | None
    command: tuple[str, ...]
    started_at: str | None
    duration_s: float | None
    exit_status: int | None
    diagnosis: DiagnosisView | None
    decision: DecisionView | None
    log: str | None

    @property
    def failed(self) -> bool:
        return self.diagnosis is not None or (self.exit_status not in (0, None))


@dataclass(frozen=True, slots=True)
class RunView:
    schema: int | None
    run_id: str
    job: str | None
    installable: str
    status: str
    exit_code: int | None
    variant: str
    started_at: str | None
    finished_at: str | None
    duration_s: float | None
    outputs: tuple[str, ...]
    attempts: tuple[AttemptView, ...]
    command_exit_status: int | None = None

    @property
    def succeeded(self) -> bool:
        """Built, as the exit code says: a fallback fails under ``--fail-on-fallback``."""
        if self.status == "fallback":
            return self.exit_code in (0, None)
        return self.status == "success"

    @property
    def failing_attempt(self) -> AttemptView | None:
        """The last attempt that failed: the one whose log tail a report shows."""
        failed = [a for a in self.attempts if a.failed]
        return failed[-1] if failed else None


# Text read from a summary is for display: terminal escapes and control characters are
# dropped here, once, so no renderer can pass one on (an installable can contain anything).
def _str(d: Mapping[str, Any], key: str, default: str = "") -> str:
    value = d.get(key)
    return clean_text(value) if isinstance(value, str) else default


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    value = d.get(key)
    return clean_text(value) if isinstance(value, str) else None


def _opt_int(d: Mapping[str, Any], key: str) -> int | None:
    value = d.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _opt_float(d: Mapping[str, Any], key: str) -> float | None:
    value = d.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None  # absent, not a number, or inf/nan (which no duration can be)


def _map(d: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = d.get(key)
    return value if isinstance(value, Mapping) else None


def seq(d: Mapping[str, Any], key: str) -> list[Any]:
    value = d.get(key)
    return list(value) if isinstance(value, list | tuple) else []


def _read_diagnosis(d: Mapping[str, Any] | None) -> DiagnosisView | None:
    if d is None:
        return None
    evidence = tuple(
        EvidenceView(_opt_int(e, "line"), clean_text(_str(e, "text")))
        for e in seq(d, "evidence")
        if isinstance(e, Mapping)
    )
    return DiagnosisView(
        kind=_str(d, "kind", "unknown"),
        rule=_str(d, "rule"),
        explanation=clean_text(_str(d, "explanation")),
        drv=_opt_str(d, "drv"),
        evidence=evidence,
    )


def _read_decision(d: Mapping[str, Any] | None) -> DecisionView | None:
    if d is None:
        return None
    nxt = _map(d, "next") or {}
    return DecisionView(
        action=_str(d, "action", "unknown"),
        delay_s=_opt_float(d, "delay_s"),
        reason=clean_text(_str(d, "reason")),
        next_installable=_opt_str(nxt, "installable"),
        next_variant=_opt_str(nxt, "variant"),
        next_cores=_opt_int(nxt, "cores"),
        next_max_jobs=_opt_int(nxt, "max_jobs"),
    )


def _read_attempt(d: Mapping[str, Any], index: int, run_installable: str) -> AttemptView:
    return AttemptView(
        number=_opt_int(d, "number") or index,
        installable=_str(d, "installable", run_installable),
        variant=_str(d, "variant", "source"),
        cores=_opt_int(d, "cores"),
        max_jobs=_opt_int(d, "max_jobs"),
        command=tuple(str(a) for a in seq(d, "command")),
        started_at=_opt_str(d, "started_at"),
        duration_s=_opt_float(d, "duration_s"),
        exit_status=_opt_int(d, "exit_status"),
        diagnosis=_read_diagnosis(_map(d, "diagnosis")),
        decision=_read_decision(_map(d, "decision")),
        log=_opt_str(d, "log"),
    )


def read_summary(summary: Mapping[str, Any]) -> RunView:
    """A typed view of a summary dict; missing optional keys become None or empty."""
    installable = _str(summary, "installable", "?")
    attempts = tuple(
        _read_attempt(a, i, installable)
        for i, a in enumerate(seq(summary, "attempts"), start=1)
        if isinstance(a, Mapping)
    )
    return RunView(
        schema=_opt_int(summary, "schema"),
        run_id=_str(summary, "run_id"),
        job=_opt_str(summary, "job"),
        installable=installable,
        status=_str(summary, "status", "unknown"),
        exit_code=_opt_int(summary, "exit_code"),
        variant=_str(summary, "variant", attempts[-1].variant if attempts else "source"),
        started_at=_opt_str(summary, "started_at"),
        finished_at=_opt_str(summary, "finished_at"),
        duration_s=_opt_float(summary, "duration_s"),
        outputs=tuple(str(o) for o in seq(summary, "outputs")),
        attempts=attempts,
        command_exit_status=_opt_int(summary, "command_exit_status"),
    )


# --- small shared wording -----------------------------------------------------------------


def clean_text(text: str) -> str:
    """Drop terminal escape sequences and control characters: reports never carry ANSI."""
    return _CONTROL.sub("", _ANSI.sub("", text))


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 59.95:  # what would round to 60.0 reads as a minute; no wait is "0.0s"
        seconds = 0.1 if 0 < seconds < 0.05 else seconds
        return f"{seconds:.0f}s" if seconds == int(seconds) else f"{seconds:.1f}s"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s"


def describe_options(attempt: AttemptView) -> str:
    cores = "?" if attempt.cores is None else str(attempt.cores)
    jobs = "?" if attempt.max_jobs is None else str(attempt.max_jobs)
    return f"cores {cores}, max-jobs {jobs}"


def describe_diagnosis(diagnosis: DiagnosisView | None) -> str:
    if diagnosis is None:
        return "ok"
    rule = f" ({diagnosis.rule})" if diagnosis.rule else ""
    return f"{diagnosis.kind}{rule}"


def describe_decision(attempt: AttemptView) -> str:
    """What nixbuild decided after this attempt, as one phrase."""
    decision = attempt.decision
    if decision is None:
        return "done"
    kind = attempt.diagnosis.kind if attempt.diagnosis is not None else ""
    after = f" after {format_duration(decision.delay_s)}" if decision.delay_s else ""
    if waits_for_memory(kind, decision.delay_s or 0.0):
        after = f" once memory is back (at most {format_duration(decision.delay_s)})"
    match decision.action:
        case "retry":
            text = f"retry{after}"
        case "degrade":
            cores = "?" if decision.next_cores is None else decision.next_cores
            jobs = "?" if decision.next_max_jobs is None else decision.next_max_jobs
            text = f"degrade to cores {cores}, max-jobs {jobs}{after}"
        case "gc_then_retry":
            text = f"collect garbage, then retry{after}"
        case "fallback":
            target = decision.next_installable or "the -bin variant"
            text = f"fall back to {target}{after}"
        case "give_up":
            text = "give up"
        case other:
            text = f"{other}{after}"
    return f"{text}: {decision.reason}" if decision.reason else text


def headline(run: RunView) -> str:
    """One line: what happened, for titles and the first line of every report."""
    count = len(run.attempts)
    attempts = f"{count} attempt" + ("" if count == 1 else "s")
    took = format_duration(run.duration_s)
    match run.status:
        case "success":
            return f"built {run.installable} ({run.variant}) in {took} after {attempts}"
        case "fallback" if not run.succeeded:
            return (
                f"built {run.installable} only through the {run.variant} fallback ({attempts}), "
                "which this run does not accept"
            )
        case "fallback":
            return f"built {run.installable} only through the {run.variant} fallback ({attempts})"
        case "failed":
            return f"failed to build {run.installable} after {attempts} ({took})"
        case "interrupted":
            return f"interrupted while building {run.installable} ({attempts})"
        case "refused":
            return f"refused to build {run.installable}: preflight checks failed"
        case other:
            return f"{other}: {run.installable} ({attempts})"


# --- lines every CI flavour prints ----------------------------------------------------------


def one_line(text: str) -> str:
    """Text for a single console line: a newline would end a CI marker line early."""
    return clean_text(text).replace("\n", " ")


def _split_lines(lines: Sequence[str]) -> list[str]:
    """Each embedded newline starts a new line, indented under the line it came from."""
    out: list[str] = []
    for line in lines:
        first, *rest = clean_text(line).split("\n")
        indent = " " * (len(first) - len(first.lstrip()) + 2)
        out += [first, *(indent + piece for piece in rest)]
    return out


# Options nixbuild itself adds to every attempt, with how many values follow: a title shows
# the command as the user would write it, and the parallelism separately.
_ADDED_OPTIONS = {
    "--log-format": 1,
    "-v": 0,
    "--extra-experimental-features": 1,
    "--out-link": 1,
    "--profile": 1,
    "--cores": 1,
    "--max-jobs": 1,
}
_ADDED_SETTINGS = ("cores", "max-jobs")


def short_command(argv: Sequence[str]) -> str:
    """``nix build .#x`` from nixbuild's full argv for an attempt (the summary keeps it all)."""
    words: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in ("--command", "-c"):
            words += argv[i:]
            break
        if word == "--option" and i + 1 < len(argv) and argv[i + 1] in _ADDED_SETTINGS:
            i += 3
        elif word in _ADDED_OPTIONS:
            i += 1 + _ADDED_OPTIONS[word]
        else:
            words.append(word if i else word.rsplit("/", 1)[-1])
            i += 1
    return " ".join(words)


def attempt_title(attempt: AttemptView, total: int | None) -> str:
    of = f"/{total}" if total else ""
    what = short_command(attempt.command) if attempt.command else attempt.installable
    return one_line(f"attempt {attempt.number}{of}: {what} ({describe_options(attempt)})")


def failure_block(attempt: AttemptView, log_tail: Sequence[str]) -> list[str]:
    """What a person must see when an attempt failed, whatever the flavour."""
    d = attempt.diagnosis
    status = "" if attempt.exit_status is None else f", exit {attempt.exit_status}"
    lines = [
        one_line(
            f"nixbuild: attempt {attempt.number} failed after "
            f"{format_duration(attempt.duration_s)}{status}: {describe_diagnosis(d)}"
        )
    ]
    if d is not None:
        if d.explanation:
            lines.append(f"  {d.explanation}")
        if d.drv:
            lines.append(f"  derivation: {d.drv}")
        for e in d.evidence:
            lines.append(f"  evidence: {'' if e.line is None else f'line {e.line}: '}{e.text}")
    if log_tail:
        where = f" ({attempt.log})" if attempt.log else ""
        lines.append(f"  last {len(log_tail)} log lines{where}:")
        lines.extend(f"  | {one_line(line)}" for line in log_tail)
    lines.append(f"nixbuild: decision: {describe_decision(attempt)}")
    return _split_lines(lines)


def success_line(attempt: AttemptView) -> str:
    return f"nixbuild: attempt {attempt.number} succeeded in {format_duration(attempt.duration_s)}"


def heartbeat_text(
    *, attempt: int, total: int | None, elapsed_s: float, silent_s: float, activity: str = ""
) -> str:
    """The line printed during long silences, so CI does not think the job hung."""
    of = f"/{total}" if total else ""
    last = f"; last activity: {activity}" if activity else ""
    return one_line(
        f"nixbuild: still building (attempt {attempt}{of}, {format_duration(elapsed_s)} elapsed, "
        f"no output for {format_duration(silent_s)}{last})"
    )


def final_line(summary: Mapping[str, Any]) -> str:
    """The run's last console line."""
    run = read_summary(summary)
    return one_line(f"nixbuild: {run.status}: {headline(run)}")
