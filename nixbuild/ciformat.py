"""Console output for CI systems: groups/sections per attempt, annotations, heartbeats, hooks.

The supervisor streams nix's log between ``attempt_start`` and ``attempt_end``; what it prints
around that log depends on the CI flavour. Each renderer is pure: it gets the per-attempt dict
of the run summary (the same keys as ``summary.json``'s ``attempts[]``) or the whole summary,
and returns the lines to print. The only I/O is in ``publish_summary`` (the step-summary file,
``buildkite-agent annotate``), kept apart so the renderers stay testable by comparison.

How a failed attempt stays visible, per flavour (we only learn that an attempt failed at its
end, after its log was already printed inside a collapsed group):

* GitHub: groups cannot be reopened, so the group is closed as usual and the failure block
  (diagnosis, evidence, decision, log tail) is printed *after* ``::endgroup::``, outside any
  group, where it is always visible.
* GitLab: the attempt's section is written ``collapsed=true``; a failed attempt's section is
  closed and followed by a second, non-collapsed section ``…_failure`` holding the failure
  block, so the failure is expanded and still foldable.
* Buildkite: ``^^^ +++`` expands the group that is already open (Buildkite's marker
  for opening the previous group once an error is known); the failure block follows in it.

No ANSI colour anywhere, except GitLab's section control sequences, which GitLab requires.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from . import process
from .cidetect import Flavor
from .model import AttemptSpec
from .report import step_summary_markdown
from .summaryview import (
    AttemptView,
    RunView,
    attempt_title,
    clean_text,
    describe_decision,
    describe_diagnosis,
    failure_block,
    final_line,
    headline,
    heartbeat_text,
    read_summary,
    success_line,
)

MAX_ANNOTATIONS = 3
_EVIDENCE_IN_ANNOTATION = 5


# --- GitHub workflow-command escaping (as @actions/core's command.ts does it) ---------------


def gh_escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def gh_escape_property(text: str) -> str:
    return gh_escape_data(text).replace(":", "%3A").replace(",", "%2C")


def gh_command(name: str, message: str, properties: Mapping[str, str | None] | None = None) -> str:
    props = ",".join(
        f"{k}={gh_escape_property(v)}" for k, v in (properties or {}).items() if v not in (None, "")
    )
    return f"::{name}{' ' + props if props else ''}::{gh_escape_data(message)}"


def attempt_started(number: int, spec: AttemptSpec, command: Sequence[str]) -> dict[str, Any]:
    """The per-attempt dict ``attempt_start`` needs, before the attempt has a record."""
    return {
        "number": number,
        "installable": spec.installable,
        "variant": str(spec.variant),
        "cores": spec.cores,
        "max_jobs": spec.max_jobs,
        "command": list(command),
    }


def _attempt(attempt: Mapping[str, Any]) -> AttemptView:
    run = read_summary({"attempts": [attempt]})
    return run.attempts[0]


# --- the renderers ------------------------------------------------------------------------------


class CiRenderer(Protocol):
    flavor: Flavor

    def attempt_start(self, attempt: Mapping[str, Any], *, total: int | None) -> list[str]: ...

    def attempt_end(
        self, attempt: Mapping[str, Any], *, log_tail: Sequence[str] = ()
    ) -> list[str]: ...

    def heartbeat(
        self, *, attempt: int, total: int | None, elapsed_s: float, silent_s: float, activity: str
    ) -> str: ...

    def final(self, summary: Mapping[str, Any]) -> list[str]: ...


class PlainRenderer:
    """Unknown CI or a pipe: plain marker lines, no markup."""

    flavor = Flavor.PLAIN

    def attempt_start(self, attempt: Mapping[str, Any], *, total: int | None) -> list[str]:
        return [f"nixbuild: {attempt_title(_attempt(attempt), total)}"]

    def attempt_end(self, attempt: Mapping[str, Any], *, log_tail: Sequence[str] = ()) -> list[str]:
        view = _attempt(attempt)
        return failure_block(view, log_tail) if view.failed else [success_line(view)]

    def heartbeat(
        self, *, attempt: int, total: int | None, elapsed_s: float, silent_s: float, activity: str
    ) -> str:
        return heartbeat_text(
            attempt=attempt, total=total, elapsed_s=elapsed_s, silent_s=silent_s, activity=activity
        )

    def final(self, summary: Mapping[str, Any]) -> list[str]:
        """The closing line; no annotation channel, the failure block is already in the log."""
        return [final_line(summary)]


class GithubRenderer(PlainRenderer):
    """GitHub Actions: ``::group::`` per attempt and ``::error``/``::warning`` annotations.

    Nix's log between start and end is wrapped in ``::stop-commands::TOKEN`` so a build log
    line that happens to start with ``::`` (``::add-mask::``, ``::error::``) is shown, not
    executed. The token must not be guessable from the log; tests pass a fixed one.
    """

    flavor = Flavor.GITHUB

    def __init__(self, token: str | None = None, workspace: str | None = None) -> None:
        self.token = token or secrets.token_hex(16)
        self.workspace = workspace  # $GITHUB_WORKSPACE: maps nix error positions to repo files

    def attempt_start(self, attempt: Mapping[str, Any], *, total: int | None) -> list[str]:
        title = attempt_title(_attempt(attempt), total)
        return [f"::group::{gh_escape_data(title)}", f"::stop-commands::{self.token}"]

    def attempt_end(self, attempt: Mapping[str, Any], *, log_tail: Sequence[str] = ()) -> list[str]:
        view = _attempt(attempt)
        lines = [f"::{self.token}::", "::endgroup::"]
        if not view.failed:
            return [*lines, success_line(view)]
        # The failure block quotes log text too, so it stays under stop-commands.
        return [
            *lines,
            f"::stop-commands::{self.token}",
            *failure_block(view, log_tail),
            f"::{self.token}::",
        ]

    def final(self, summary: Mapping[str, Any]) -> list[str]:
        annotations = github_annotations(read_summary(summary), self.workspace)
        return [*annotations, final_line(summary)]


def github_annotations(run: RunView, workspace: str | None = None) -> list[str]:
    """At most MAX_ANNOTATIONS: the decisive failure as an error, recovered ones as warnings."""
    out: list[str] = []
    failed = not run.succeeded
    decisive = run.failing_attempt if failed else None
    if decisive is not None:
        out.append(_annotation("error", decisive, workspace))
    elif failed:
        out.append(gh_command("error", headline(run), {"title": f"nixbuild: {run.status}"}))
    if run.status == "fallback":
        out.append(
            gh_command("warning", headline(run), {"title": "nixbuild: built the fallback variant"})
        )
    seen: set[tuple[str, str]] = set()
    for a in run.attempts:
        if a is decisive or a.diagnosis is None or len(out) >= MAX_ANNOTATIONS:
            continue
        key = (a.diagnosis.kind, a.diagnosis.rule)
        if key not in seen:
            seen.add(key)
            out.append(_annotation("warning", a, workspace))
    return out[:MAX_ANNOTATIONS]


# nix's error positions: "at /nix/store/<hash>-source/flake.nix:5:21" (a flake's store copy) or
# an absolute path of a file in the checkout.
_POSITION = re.compile(r"\bat (?P<path>/\S+?):(?P<line>\d+):(?P<col>\d+)")
_STORE_SOURCE = re.compile(r"/\S+?/[0-9a-z]{32}-source/(?P<rel>\S+)")


def source_position(texts: Sequence[str], workspace: str | None) -> tuple[str, str, str] | None:
    """(repo-relative file, line, column) of the first nix error position in the checkout.

    GitHub attaches an annotation to a file only when it names a file of the repository; the
    attempt log is not one, so an annotation gets ``file=`` only for a position in the sources
    (an evaluation error in flake.nix), where it then shows on that line of the diff.
    """
    root = workspace.rstrip("/") + "/" if workspace else None
    for text in texts:
        for m in _POSITION.finditer(clean_text(text)):
            path = m.group("path")
            if store := _STORE_SOURCE.fullmatch(path):
                return store.group("rel"), m.group("line"), m.group("col")
            if root and path.startswith(root):
                return path[len(root) :], m.group("line"), m.group("col")
    return None


def _shorten(text: str, limit: int = 400) -> str:
    """One evidence line in an annotation: compiler lines can be kilobytes long."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _annotation(level: str, attempt: AttemptView, workspace: str | None) -> str:
    d = attempt.diagnosis
    title = f"nixbuild attempt {attempt.number}: {describe_diagnosis(d)}"
    body = [d.explanation if d and d.explanation else f"attempt {attempt.number} failed"]
    where = f"{attempt.log}:" if attempt.log else "line "
    evidence = d.evidence if d is not None else ()
    body += [
        _shorten(e.text if e.line is None else f"{where}{e.line}: {e.text}")
        for e in evidence[:_EVIDENCE_IN_ANNOTATION]
    ]
    body.append(f"decision: {describe_decision(attempt)}")
    props: dict[str, str | None] = {"title": title}
    position = source_position([e.text for e in evidence], workspace)
    if position is not None:
        props.update(zip(("file", "line", "col"), position, strict=True))
    return gh_command(level, "\n".join(body), props)


class GitlabRenderer(PlainRenderer):
    """GitLab: a collapsed section per attempt; a failed one gets an expanded failure section."""

    flavor = Flavor.GITLAB

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock  # section markers carry a unix timestamp

    @staticmethod
    def _start(name: str, at: float, header: str, *, collapsed: bool) -> str:
        opt = "[collapsed=true]" if collapsed else ""
        return f"\x1b[0Ksection_start:{int(at)}:{name}{opt}\r\x1b[0K{header}"

    @staticmethod
    def _end(name: str, at: float) -> str:
        return f"\x1b[0Ksection_end:{int(at)}:{name}\r\x1b[0K"

    def attempt_start(self, attempt: Mapping[str, Any], *, total: int | None) -> list[str]:
        view = _attempt(attempt)
        name = f"nixbuild_attempt_{view.number}"
        return [self._start(name, self.clock(), attempt_title(view, total), collapsed=True)]

    def attempt_end(self, attempt: Mapping[str, Any], *, log_tail: Sequence[str] = ()) -> list[str]:
        view = _attempt(attempt)
        name = f"nixbuild_attempt_{view.number}"
        at = self.clock()
        if not view.failed:
            return [self._end(name, at), success_line(view)]
        block = failure_block(view, log_tail)
        failure = f"{name}_failure"
        return [
            self._end(name, at),
            self._start(failure, at, block[0], collapsed=False),
            *block[1:],
            self._end(failure, at),
        ]


class BuildkiteRenderer(PlainRenderer):
    """Buildkite: ``--- `` opens a collapsed group; ``^^^ +++`` expands it once it failed."""

    flavor = Flavor.BUILDKITE

    def attempt_start(self, attempt: Mapping[str, Any], *, total: int | None) -> list[str]:
        return [f"--- {attempt_title(_attempt(attempt), total)}"]

    def attempt_end(self, attempt: Mapping[str, Any], *, log_tail: Sequence[str] = ()) -> list[str]:
        view = _attempt(attempt)
        if not view.failed:
            return [success_line(view)]
        return ["^^^ +++", *failure_block(view, log_tail)]


def renderer_for(
    flavor: Flavor,
    *,
    token: str | None = None,
    clock: Callable[[], float] = time.time,
    workspace: str | None = None,
) -> CiRenderer:
    """The renderer for a flavour; ``workspace`` is ``$GITHUB_WORKSPACE`` (GitHub only)."""
    match flavor:
        case Flavor.GITHUB:
            return GithubRenderer(token, workspace)
        case Flavor.GITLAB:
            return GitlabRenderer(clock)
        case Flavor.BUILDKITE:
            return BuildkiteRenderer()
        case _:
            return PlainRenderer()


# --- the final summary hook (the only I/O here) ---------------------------------------------


def buildkite_style(run: RunView) -> str:
    if run.succeeded:
        return "success" if run.status == "success" else "warning"
    return "warning" if run.status == "interrupted" else "error"


Runner = Callable[..., process.Completed]


def publish_summary(
    flavor: Flavor,
    summary: Mapping[str, Any],
    log_tail: Sequence[str] = (),
    *,
    environ: Mapping[str, str] | None = None,
    run: Runner = process.run_capture,
    which: Callable[[str], str | None] = shutil.which,
) -> list[str]:
    """Hand the end-of-run summary to the CI's own UI; returns lines saying what was done.

    GitHub: append the step-summary Markdown to the file named by ``$GITHUB_STEP_SUMMARY``.
    Buildkite: ``buildkite-agent annotate --style S --context nixbuild`` with the same Markdown
    on stdin, when the agent is on PATH. A failure here never fails the build: it is reported
    as a line and the run's own result stands.
    """
    env = os.environ if environ is None else environ
    markdown = step_summary_markdown(summary, log_tail)
    if flavor is Flavor.GITHUB:
        target = env.get("GITHUB_STEP_SUMMARY")
        if not target:
            return []
        try:
            with Path(target).open("a", encoding="utf-8") as fh:
                fh.write(markdown + "\n")
        except OSError as exc:
            return [f"nixbuild: could not write the step summary to {target}: {exc.strerror}"]
        return []
    if flavor is Flavor.BUILDKITE:
        if which("buildkite-agent") is None:
            return []
        style = buildkite_style(read_summary(summary))
        argv = ["buildkite-agent", "annotate", "--style", style, "--context", "nixbuild"]
        try:
            done = run(argv, stdin=markdown, timeout=60)
        except process.CommandNotFound:
            return []
        if done.status != 0:
            why = clean_text(done.stderr.strip().splitlines()[-1]) if done.stderr.strip() else ""
            return [
                f"nixbuild: buildkite-agent annotate failed (exit {done.status}) {why}".rstrip()
            ]
    return []
