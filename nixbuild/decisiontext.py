"""The words for what the policy decided: the one line per attempt, and durations.

``policy.py`` decides; this module only phrases a decision for the console, the structured
log and ``nixbuild history``. The reports rendered from ``summary.json`` phrase it in
``summaryview.py``.
"""

from __future__ import annotations

import math

from .model import AttemptRecord, AttemptSpec, Decision, Kind, Variant
from .policy import FALLBACK, GC_THEN_RETRY, GIVE_UP, memory_wait


def decision_line(record: AttemptRecord, total: int) -> str:
    """The one line per attempt for the console and the structured log.

    ``attempt 2/6 failed: network (rule network.curl-error) → retry with the same options in 1.4 s``
    ``attempt 3/6 failed: oom (rule oom.cc1plus-killed) → retry with cores 8→4, max-jobs 1 once
    memory is back (at most 45 s)``
    """
    head = f"attempt {record.number}/{total}"
    spec = record.spec
    if record.diagnosis is None:
        if spec.variant is Variant.BIN:
            return f"{head} succeeded: built the prebuilt variant {spec.installable}"
        return f"{head} succeeded with cores {spec.cores}, max-jobs {spec.max_jobs}"
    failed = f"{head} failed: {record.diagnosis.kind} (rule {record.diagnosis.rule})"
    if record.decision is None:
        return failed
    return f"{failed} → {_describe(record.decision, spec, record.diagnosis.kind)}"


def _describe(decision: Decision, before: AttemptSpec, kind: Kind) -> str:
    nxt = decision.next
    if decision.action == GIVE_UP or nxt is None:
        return f"give up: {decision.reason}" if decision.reason else "give up"
    if memory_wait(kind, decision) is not None:
        when = f" once memory is back (at most {format_seconds(decision.delay_s)})"
    else:
        when = f" in {format_seconds(decision.delay_s)}" if decision.delay_s > 0 else ""
    if decision.action == FALLBACK or nxt.installable != before.installable:
        return f"fall back to {nxt.installable}{when}"
    options = _options(before, nxt)
    if decision.action == GC_THEN_RETRY:
        return f"collect garbage, then retry {options}{when}"
    return f"retry {options}{when}"


def _options(before: AttemptSpec, after: AttemptSpec) -> str:
    if (before.cores, before.max_jobs) == (after.cores, after.max_jobs):
        return "with the same options"

    def one(name: str, old: int, new: int) -> str:
        return f"{name} {new}" if old == new else f"{name} {old}→{new}"

    cores = one("cores", before.cores, after.cores)
    return f"with {cores}, {one('max-jobs', before.max_jobs, after.max_jobs)}"


def format_seconds(seconds: float) -> str:
    """``0.4 s``, ``7.5 s``, ``45 s``, ``1 min 12 s``, ``10 min``, ``1 h 5 min``.

    Under 10 s to a tenth (the first network retry waits within 2 s, so "1 s" for 0.3 s
    would mislead); a positive delay shows as at least 0.1 s.
    """
    if not math.isfinite(seconds):  # never from a valid config; a line must not crash
        return "?"
    if 0 < seconds < 9.95:
        return f"{max(seconds, 0.1):.1f}".removesuffix(".0") + " s"
    total = round(seconds) if seconds > 0 else 0
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h"] if hours else []
    if minutes:
        parts.append(f"{minutes} min")
    if secs or not parts:
        parts.append(f"{secs} s")
    return " ".join(parts)
