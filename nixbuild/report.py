"""Reports rendered from the run summary: human text, step-summary Markdown, JUnit XML, JSON.

Every function here is pure: its input is the ``summary.json`` dict (schema 1, see the design
notes, "Run summary") and, where a log is shown, the tail of the failing attempt's log. The
summary is read through ``read_summary``, which tolerates missing or mistyped optional keys,
so a partial summary (a run that was killed, an older writer) still renders.
"""

from __future__ import annotations

import html
import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

from .summaryview import (
    AttemptView,
    EvidenceView,
    clean_text,
    describe_decision,
    describe_diagnosis,
    describe_options,
    format_duration,
    headline,
    one_line,
    read_summary,
    seq,
)

SCHEMA_VERSION = 1

# The contract of schema 1 (the design notes' keys, plus "mode" and "gcroot" which the
# supervisor writes). A test pins these; changing them means a new schema version.
SUMMARY_KEYS: tuple[str, ...] = (
    "schema",
    "run_id",
    "job",
    "installable",
    "mode",
    "status",
    "exit_code",
    "variant",
    "started_at",
    "finished_at",
    "duration_s",
    "gcroot",
    "outputs",
    "command_exit_status",
    "attempts",
)
ATTEMPT_KEYS: tuple[str, ...] = (
    "number",
    "installable",
    "variant",
    "cores",
    "max_jobs",
    "command",
    "started_at",
    "duration_s",
    "exit_status",
    "diagnosis",
    "decision",
    "log",
)
DIAGNOSIS_KEYS: tuple[str, ...] = ("kind", "rule", "drv", "explanation", "evidence")
DECISION_KEYS: tuple[str, ...] = ("action", "delay_s", "next", "reason")

# Characters XML 1.0 cannot carry at all, even escaped.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


# --- human text -----------------------------------------------------------------------------


def human_summary(summary: Mapping[str, Any]) -> str:
    """The end-of-run text a person reads in the morning."""
    run = read_summary(summary)
    lines = [f"nixbuild: {run.status}: {headline(run)}"]
    facts = [f"run {run.run_id}" if run.run_id else "", f"job {run.job}" if run.job else ""]
    if run.exit_code is not None:
        facts.append(f"exit code {run.exit_code}")
    if any(facts):
        lines.append("  " + ", ".join(f for f in facts if f))
    if run.started_at or run.finished_at:
        lines.append(f"  started {run.started_at or '?'}, finished {run.finished_at or '?'}")
    lines.append(f"  variant: {run.variant}")
    if run.outputs:
        lines.append("  outputs:")
        lines.extend(f"    {o}" for o in run.outputs)
    for a in run.attempts:
        status = "" if a.exit_status is None else f", exit {a.exit_status}"
        lines.append(
            f"attempt {a.number}: {a.installable} ({a.variant}), {describe_options(a)}"
            f", {format_duration(a.duration_s)}{status}"
        )
        if a.diagnosis is not None:
            lines.append(f"  diagnosis: {describe_diagnosis(a.diagnosis)}")
            if a.diagnosis.explanation:
                lines.append(f"    {a.diagnosis.explanation}")
            if a.diagnosis.drv:
                lines.append(f"    derivation: {a.diagnosis.drv}")
            for e in a.diagnosis.evidence:
                where = "" if e.line is None else f"line {e.line}: "
                lines.append(f"    {where}{e.text}")
        elif not a.failed:
            lines.append("  succeeded")
        lines.append(f"  decision: {describe_decision(a)}")
        if a.log:
            lines.append(f"  log: {a.log}")
    return "\n".join(lines) + "\n"


# --- Markdown for $GITHUB_STEP_SUMMARY ----------------------------------------------------

# CommonMark lets any ASCII punctuation be backslash-escaped; these are the ones that can
# start markup inside a table cell. "|" must be escaped even inside code spans in GFM tables.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&!#])")


def md_escape(text: str) -> str:
    """Text as a literal inline Markdown run (one line: newlines become spaces)."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(clean_text(text).split()))


def md_fence(lines: Sequence[str], info: str = "text") -> str:
    """A fenced code block that no backtick run inside ``lines`` can close early."""
    body = [clean_text(line) for line in lines]
    longest = max((len(m) for line in body for m in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return "\n".join([fence + info, *body, fence])


# GitHub caps a step summary at 1 MiB; the attempt log on disk has everything anyway.
MAX_SUMMARY_TAIL_LINES = 200

_STATUS_WORD = {
    "success": "succeeded",
    "fallback": "succeeded through the fallback",
    "failed": "failed",
    "interrupted": "was interrupted",
    "refused": "was refused",
}


def step_summary_markdown(summary: Mapping[str, Any], log_tail: Sequence[str] = ()) -> str:
    run = read_summary(summary)
    word = (
        _STATUS_WORD.get(run.status, run.status)
        if run.succeeded or run.status != "fallback"
        else "failed"
    )
    out = [f"## nixbuild {md_escape(word)}: {md_escape(run.installable)}", ""]
    out += [md_escape(headline(run)) + ".", ""]
    out += [f"- **status:** {md_escape(run.status)}", f"- **variant:** {md_escape(run.variant)}"]
    if run.exit_code is not None:
        out.append(f"- **exit code:** {run.exit_code}")
    if run.run_id:
        out.append(f"- **run:** {md_escape(run.run_id)}")
    out.extend(f"- **output:** {md_escape(o)}" for o in run.outputs)
    out.append("")
    if run.attempts:
        out.append(
            "| # | installable | variant | cores | max-jobs | duration | diagnosis | decision |"
        )
        out.append("|---:|---|---|---:|---:|---:|---|---|")
        for a in run.attempts:
            cells = [
                str(a.number),
                md_escape(a.installable),
                md_escape(a.variant),
                "?" if a.cores is None else str(a.cores),
                "?" if a.max_jobs is None else str(a.max_jobs),
                format_duration(a.duration_s),
                md_escape(describe_diagnosis(a.diagnosis)),
                md_escape(describe_decision(a)),
            ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    failing = run.failing_attempt
    if failing is not None and failing.diagnosis is not None:
        d = failing.diagnosis
        out.append(f"### Attempt {failing.number}: {md_escape(describe_diagnosis(d))}")
        out.append("")
        if d.explanation:
            out += [md_escape(d.explanation), ""]
        if d.evidence:
            out.append(md_fence([_evidence_line(e) for e in d.evidence]))
            out.append("")
    if log_tail and failing is not None:
        log_tail = log_tail[-MAX_SUMMARY_TAIL_LINES:]
        # inside an HTML block Markdown escapes do not apply: escape as HTML
        log = f" ({html.escape(one_line(failing.log))})" if failing.log else ""
        out.append(f"<details><summary>Log tail of attempt {failing.number}{log}</summary>")
        out += ["", md_fence(log_tail), "", "</details>", ""]
    return "\n".join(out)


def _evidence_line(e: EvidenceView) -> str:
    return e.text if e.line is None else f"{e.line}: {e.text}"


# --- JUnit XML ------------------------------------------------------------------------------


def _xml_text(text: str) -> str:
    return _XML_ILLEGAL.sub("\ufffd", clean_text(text))


def _seconds(value: float | None) -> float:
    """A JUnit time: finite and not negative, whatever the summary holds."""
    return value if value is not None and math.isfinite(value) and value >= 0 else 0.0


def junit_xml(summary: Mapping[str, Any], log_tail: Sequence[str] = ()) -> str:
    """JUnit XML: one testcase per installable that was attempted, classname ``nixbuild``.

    An installable that failed gets a ``<failure>`` (message = explanation, type = kind) with
    the evidence, and the failing attempt's log tail as ``<system-out>``. When the run still
    succeeded through another installable (the ``-bin`` fallback), the abandoned source
    installable is reported ``<skipped>`` rather than failed: the pipeline's result is green.
    ElementTree escapes everything, so a log containing ``]]>`` or ``<`` cannot break it.
    """
    run = read_summary(summary)
    rescued = run.succeeded
    by_installable: dict[str, list[AttemptView]] = {}
    for a in run.attempts:
        by_installable.setdefault(a.installable, []).append(a)
    if not by_installable:
        by_installable[run.installable] = []

    cases: list[ET.Element] = []
    failures = skipped = 0
    failing = run.failing_attempt
    for installable, attempts in by_installable.items():
        seconds = _seconds(sum(_seconds(a.duration_s) for a in attempts))
        case = ET.Element(
            "testcase", name=_xml_text(installable), classname="nixbuild", time=f"{seconds:.3f}"
        )
        cases.append(case)
        command_failed = (
            run.command_exit_status not in (None, 0)
            and bool(run.attempts)
            and installable == run.attempts[-1].installable
        )
        if command_failed:
            failures += 1
            message = f"the command run in the dev shell exited {run.command_exit_status}"
            ET.SubElement(case, "failure", message=message, type="command")
            continue
        if attempts and not attempts[-1].failed:
            continue
        last = attempts[-1] if attempts else None
        diagnosis = last.diagnosis if last else None
        if rescued:
            skipped += 1
            ET.SubElement(case, "skipped", message=_xml_text(f"abandoned: {headline(run)}"))
            continue
        failures += 1
        kind = diagnosis.kind if diagnosis else run.status
        message = diagnosis.explanation if diagnosis and diagnosis.explanation else headline(run)
        failure = ET.SubElement(case, "failure", message=_xml_text(message), type=_xml_text(kind))
        body = [describe_diagnosis(diagnosis)] if diagnosis else []
        if diagnosis:
            body += [_evidence_line(e) for e in diagnosis.evidence]
        failure.text = _xml_text("\n".join(body))
        if log_tail and last is not None and last is failing:
            out = ET.SubElement(case, "system-out")
            out.text = _xml_text("\n".join(log_tail))

    total = (
        run.duration_s
        if run.duration_s is not None
        else sum(_seconds(a.duration_s) for a in run.attempts)
    )
    total_time = f"{_seconds(total):.3f}"
    counts = {
        "tests": str(len(cases)),
        "failures": str(failures),
        "errors": "0",
        "skipped": str(skipped),
    }
    root = ET.Element("testsuites", {"name": "nixbuild", "time": total_time, **counts})
    suite = ET.SubElement(root, "testsuite", {"name": "nixbuild", "time": total_time, **counts})
    if run.started_at:
        suite.set("timestamp", _xml_text(run.started_at))
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("run_id", run.run_id),
        ("status", run.status),
        ("variant", run.variant),
        ("exit_code", "" if run.exit_code is None else str(run.exit_code)),
    ):
        ET.SubElement(props, "property", name=name, value=_xml_text(value))
    suite.extend(cases)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# --- JSON -----------------------------------------------------------------------------------


def _ordered(d: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """Known keys in contract order, then any extra keys sorted: a stable, diffable file."""
    out = {k: d[k] for k in keys if k in d}
    out.update({k: d[k] for k in sorted(d) if k not in out})
    return out


def json_report(summary: Mapping[str, Any]) -> str:
    """The summary as JSON with a stable key order (the ``--json PATH`` file)."""
    top = _ordered(summary, SUMMARY_KEYS)
    attempts = []
    for a in seq(summary, "attempts"):
        if not isinstance(a, Mapping):
            continue
        att = _ordered(a, ATTEMPT_KEYS)
        if isinstance(att.get("diagnosis"), Mapping):
            att["diagnosis"] = _ordered(att["diagnosis"], DIAGNOSIS_KEYS)
        if isinstance(att.get("decision"), Mapping):
            att["decision"] = _ordered(att["decision"], DECISION_KEYS)
        attempts.append(att)
    if "attempts" in top:
        top["attempts"] = attempts
    return json.dumps(top, indent=2, ensure_ascii=False) + "\n"
