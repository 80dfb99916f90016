"""The shared vocabulary: frozen dataclasses passed between the pure stages.

Every stage of the pipeline (plan → nixcmd → logstream → classify → policy → report)
consumes and produces these values; none of them does I/O. Keeping them in one small
module lets each stage be tested with literal values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Kind(enum.StrEnum):
    """The closed failure taxonomy (see README "Failure taxonomy")."""

    OOM = "oom"
    DISK = "disk"
    NETWORK = "network"
    TIMEOUT = "timeout"
    HASH = "hash"
    EVAL = "eval"
    BUILD = "build"
    INTERRUPTED = "interrupted"
    UNKNOWN = "unknown"


class Source(enum.StrEnum):
    """Where a log line came from; decides how much a rule trusts it."""

    NIX = "nix"  # nix's own messages (errors, warnings, "building '…'")
    BUILD = "build"  # a builder's output (compiler, make, test suite)
    EXTERNAL = "external"  # nixbuild's own observations: signals, watchdog, cgroup


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of an attempt's log, as the classifier sees it.

    ``number`` is the 1-based line number in the human-readable attempt log, so evidence
    can be found again with ``sed -n Np attempt-1.log``. ``drv`` is the store path of the
    derivation whose builder printed it, when known.
    """

    number: int
    text: str
    source: Source = Source.BUILD
    drv: str | None = None


@dataclass(frozen=True, slots=True)
class Evidence:
    line: int
    text: str


@dataclass(frozen=True, slots=True)
class Diagnosis:
    kind: Kind
    rule: str
    explanation: str
    evidence: tuple[Evidence, ...] = ()
    drv: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "kind": str(self.kind),
            "rule": self.rule,
            "drv": self.drv,
            "explanation": self.explanation,
            "evidence": [{"line": e.line, "text": e.text} for e in self.evidence],
        }


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """How the nix process ended. ``signal`` is set when it died from one."""

    status: int | None
    signal: int | None = None
    interrupted_by: int | None = None  # the signal nixbuild itself received, if any


class Mode(enum.StrEnum):
    BUILD = "build"
    DEVELOP = "develop"


class Variant(enum.StrEnum):
    SOURCE = "source"
    BIN = "bin"


@dataclass(frozen=True, slots=True)
class AttemptSpec:
    """Everything that distinguishes one attempt from another."""

    installable: str
    cores: int
    max_jobs: int
    variant: Variant = Variant.SOURCE


def waits_for_memory(kind: str, delay_s: float) -> bool:
    """Whether a decision's ``delay_s`` is the longest wait for memory to come back rather
    than a fixed pause: after out-of-memory, nixbuild polls available memory
    (policy.memory_wait). One rule for the decision line and the reports (summaryview.py),
    which read ``summary.json`` and so get the kind as text."""
    return kind == Kind.OOM and delay_s > 0


@dataclass(frozen=True, slots=True)
class Decision:
    action: str  # retry | degrade | gc_then_retry | fallback | give_up
    delay_s: float = 0.0
    next: AttemptSpec | None = None
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        nxt = None
        if self.next is not None:
            nxt = {
                "installable": self.next.installable,
                "variant": str(self.next.variant),
                "cores": self.next.cores,
                "max_jobs": self.next.max_jobs,
            }
        return {"action": self.action, "delay_s": self.delay_s, "next": nxt, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    number: int
    spec: AttemptSpec
    command: tuple[str, ...]
    started_at: str
    duration_s: float
    exit_status: int | None
    log: str
    diagnosis: Diagnosis | None = None
    decision: Decision | None = None
    outputs: tuple[str, ...] = field(default=())
