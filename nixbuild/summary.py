"""The run summary (``summary.json``, also what ``--json`` writes): a pure function of a run.

The keys are a contract (README "Run summary"; tests/test_report.py pins them). Bump
``SUMMARY_SCHEMA`` when a key changes meaning or disappears; adding keys is compatible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .errors import ExitCode
from .model import AttemptRecord, AttemptSpec, Mode

SUMMARY_SCHEMA = 1


@dataclass(frozen=True, slots=True)
class Outcome:
    run_id: str
    run_dir: Path
    status: str  # success | fallback | failed | interrupted
    exit_code: ExitCode
    attempts: tuple[AttemptRecord, ...]
    outputs: tuple[str, ...]
    summary: dict[str, object]


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def build_summary(
    run_id: str,
    job: str | None,
    mode: Mode,
    first: AttemptSpec,
    gcroot: Path | None,
    *,
    status: str,
    exit_code: ExitCode,
    started: float,
    finished: float,
    history: Sequence[AttemptRecord],
    outputs: Sequence[str],
    command_exit_status: int | None = None,
) -> dict[str, object]:
    last = history[-1] if history else None
    return {
        "schema": SUMMARY_SCHEMA,
        "run_id": run_id,
        "job": job,
        "installable": first.installable,
        "mode": str(mode),
        "status": status,
        "exit_code": int(exit_code),
        "variant": str(last.spec.variant) if last else str(first.variant),
        "started_at": iso(started),
        "finished_at": iso(finished),
        "duration_s": round(finished - started, 3),
        "gcroot": None if gcroot is None else str(gcroot),
        "outputs": list(outputs),
        # `nixbuild run -- nix develop … -c CMD`: CMD's exit status (None: no such command)
        "command_exit_status": command_exit_status,
        "attempts": [attempt_json(r) for r in history],
    }


def attempt_json(r: AttemptRecord) -> dict[str, object]:
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
