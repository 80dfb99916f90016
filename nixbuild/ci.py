"""CI integration at run time: the renderer as an observer, and the report files.

ciformat.py and report.py are pure renderers of the run summary; this module feeds them
while the run happens (group markers around each attempt, the failure block with the log
tail after it, annotations and the step summary at the end) and writes ``--json`` /
``--junit`` files atomically.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .cidetect import Flavor, detect_ci
from .ciformat import CiRenderer, attempt_started, publish_summary, renderer_for
from .errors import UsageError
from .model import AttemptRecord, AttemptSpec
from .observers import BaseObserver, RunStart
from .report import json_report, junit_xml
from .rundir import check_name_length, write_text_atomic
from .summary import Outcome, attempt_json

TAIL_LINES = 40
Say = Callable[[str], None]


def read_tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a log file, reading only its end (logs can be huge)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    return data.splitlines()[-lines:]


def choose_renderer(ci_format: str | None, environ: Mapping[str, str]) -> CiRenderer | None:
    """The CI renderer for this run, or None on a terminal / outside CI."""
    flavor = detect_ci(environ, ci_format)
    if flavor is Flavor.TERMINAL:
        return None
    return renderer_for(flavor, workspace=environ.get("GITHUB_WORKSPACE"))


class CiObserver(BaseObserver):
    """Prints the renderer's lines at the right moments, through the console."""

    def __init__(self, renderer: CiRenderer, say: Say, total: int) -> None:
        self.renderer = renderer
        self.say = say
        self.total = total
        self.run_dir: Path | None = None
        self.last_tail: list[str] = []

    def run_started(self, run: RunStart) -> None:
        self.run_dir = Path(run.run_dir)

    def attempt_started(
        self, number: int, total: int, spec: AttemptSpec, argv: Sequence[str]
    ) -> None:
        for line in self.renderer.attempt_start(attempt_started(number, spec, argv), total=total):
            self.say(line)

    def attempt_finished(self, record: AttemptRecord) -> None:
        tail: list[str] = []
        if record.diagnosis is not None and self.run_dir is not None:
            tail = read_tail(self.run_dir / record.log)
            self.last_tail = tail
        for line in self.renderer.attempt_end(attempt_json(record), log_tail=tail):
            self.say(line)

    def run_finished(self, outcome: Outcome) -> None:
        for line in self.renderer.final(outcome.summary):
            self.say(line)
        for line in publish_summary(self.renderer.flavor, outcome.summary, self.last_tail):
            self.say(line)


def check_report_path(path: str | None, option: str) -> Path | None:
    """Fail before building, not after hours, when a report cannot be written there.

    Reports are written to a temporary file that then replaces the target, so the target
    must be a regular file (or not exist yet): renamed over, ``/dev/null`` or a FIFO would
    be destroyed. A symlink is followed: its target is replaced, the link stays.
    """
    if path is None:
        return None
    target = Path(os.path.realpath(Path(path).expanduser()))
    check_name_length(target, option)  # first: the checks below stat the path
    if not target.parent.is_dir() or not os.access(target.parent, os.W_OK):
        raise UsageError(
            f"{option} {path}: directory {target.parent} does not exist or is not writable"
        )
    if target.is_dir():
        raise UsageError(f"{option} {path}: is a directory; give a file path")
    if target.exists() and not target.is_file():
        raise UsageError(
            f"{option} {path}: is not a regular file (a device, FIFO or socket), and the "
            "report would replace it",
            hint="give the path of a regular file, or of one that does not exist yet",
        )
    return target


def write_reports(
    outcome: Outcome, json_path: Path | None, junit_path: Path | None, say: Say
) -> None:
    tail: Sequence[str] = ()
    failing = [a for a in outcome.attempts if a.diagnosis is not None]
    if failing:
        tail = read_tail(outcome.run_dir / failing[-1].log)
    reports: list[tuple[Path | None, Callable[[], str]]] = [
        (json_path, lambda: json_report(outcome.summary)),
        (junit_path, lambda: junit_xml(outcome.summary, tail)),
    ]
    for path, render in reports:
        if path is None:
            continue
        try:
            write_text_atomic(path, render())
        except OSError as exc:
            say(f"nixbuild: warning: could not write {path}: {exc.strerror or exc}")
