"""Why did a Nix build fail? An ordered rule table → Diagnosis(kind, rule, evidence, drv).

The classifier is incremental: the supervisor feeds it every line of an attempt as it
arrives, and asks for the verdict when nix has exited. It keeps bounded state only (the
first few matching lines per rule and derivation, the first failing derivation), so memory
stays flat over a ten-million-line log. Each line costs one substring prefilter; the
rules' regular expressions run only on the rare lines that contain one of their keywords
(classify_prefilter.py).

How the verdict is reached (RULES, in classify_rules.py, holds the order):

* The failing derivation is the FIRST one nix reports as failed ("builder for … failed",
  "Cannot build … Reason: builder failed", a hash mismatch, a timeout) — never a dependent
  ("1 dependencies of derivation … failed", "Reason: 1 dependency failed").
* Build-log evidence counts only when it belongs to that derivation (or to no known one,
  as in legacy nix-build logs): a successful neighbour's test output cannot accuse it.
* The first CAUSE rule with such evidence decides: root causes before symptoms, external
  observations and nix's final messages before build-log lines.
* Nix's warnings ("warning: error: unable to download …; retrying") never decide.
* When the exit status is unknown (a saved log), a failure needs proof: a nix error or a
  line that by itself reports one. Failure words in passing test names prove nothing.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from .classify_prefilter import Prefilter
from .classify_rules import FETCHER_NAME, RULES, Role, Rule
from .model import Diagnosis, Evidence, ExitInfo, Kind, LogLine, Source
from .textlog import pname

__all__ = ["RULES", "Classifier", "Role", "Rule", "classify", "drv_name", "matching_rules"]

_HITS_PER_DRV = 3  # evidence lines kept per rule and derivation
_DRVS_PER_RULE = 128  # derivations remembered per rule; the oldest are forgotten first
_MAX_EVIDENCE = 5
_MAX_DETAIL = 160
_MAX_EVIDENCE_CHARS = 500  # a minified-JS or base64 line can be megabytes long

_Q = r"['\u2018\u2019`\"]"  # nix's quotes over the years: '…', curly, `…'
_QT = r"[^'\u2018\u2019`\"]"
_FAILED_DRV = re.compile(
    rf"builder for {_Q}({_QT}+){_Q} failed|build of {_Q}({_QT}+){_Q} on {_Q}"
    rf"|hash mismatch in fixed-output derivation\s+{_Q}({_QT}+){_Q}"
    rf"|building of {_Q}({_QT}+?\.drv)(?:[!^]{_QT}*)?{_Q}.* timed out"
    rf"|is required to build {_Q}({_QT}+){_Q}"
)
_CANNOT_BUILD = re.compile(rf"Cannot build {_Q}({_QT}+){_Q}")
_TOP_LEVEL_FAILED = re.compile(rf"build of {_Q}({_QT}+?)(?:\^\S*)?{_Q}.* failed")
_NIX_FAILURE = re.compile(
    r"^(?:error\b(?! \(ignored\))|builder for |build of .* failed|[Cc]annot build"
    r"|building of .* timed out|hash mismatch in fixed-output|unexpected error)"
)
_TAIL = re.compile(r"^\s+> ?")
_BODY_PREFIX = re.compile(r"^(?:\s*> ?|[A-Za-z0-9+._?=-]{1,211}> ?)")
_STORE_NAME = re.compile(r"^[0-9a-z]{32}-")


def drv_name(drv: str) -> str:
    """``/nix/store/<hash>-python3.12-torch-2.5.1.drv`` → ``python3.12-torch-2.5.1``."""
    base = drv.rsplit("/", 1)[-1].removesuffix(".drv")
    return _STORE_NAME.sub("", base, count=1)


def _keywords(source: Source) -> dict[str, list[int]]:
    by_keyword: dict[str, list[int]] = {}
    for number, rule in enumerate(RULES):
        if source in rule.sources:
            for keyword in rule.keywords:
                by_keyword.setdefault(keyword, []).append(number)
    return by_keyword


_PREFILTER = {source: Prefilter.build(_keywords(source)) for source in Source}
_SEARCH = {source: prefilter.pattern.search for source, prefilter in _PREFILTER.items()}
# Enum members as module constants: `Source.NIX` is an attribute lookup of ≈100 ns on 3.11.
_NIX, _BUILD = Source.NIX, Source.BUILD
_BUILD_SEARCH = _SEARCH[_BUILD]
_RULE_NUMBER = {rule.id: number for number, rule in enumerate(RULES)}


@dataclass(slots=True)
class _Hits:
    lines: list[LogLine]
    groups: dict[str, str]


@dataclass(slots=True)
class _State:
    hits: dict[int, dict[str | None, _Hits]] = field(default_factory=dict)
    failing: str | None = None  # the first derivation nix reported as failed
    top_level: str | None = None  # "build of '…' failed": the requested one, if nothing better
    pending_cannot_build: str | None = None
    failing_line: LogLine | None = None
    nix_failed: bool = False
    fatal_seen: bool = False
    block_drv: str | None = None
    build_started: bool = False  # nix announced a derivation ("building '…'")
    plain_nix_block: bool = False  # inside a plain-text nix error, before any build


class Classifier:
    """Incremental classifier: ``feed`` every line of an attempt, then ``finish``."""

    def __init__(self) -> None:
        self._s = _State()

    def feed(self, line: LogLine) -> None:
        self.feed_text(line.number, line.text, line.source, line.drv, line)

    def feed_text(
        self,
        line_number: int,
        text: str,
        source: Source,
        drv: str | None,
        line: LogLine | None = None,
    ) -> None:
        """``feed`` for the hot path: the LogLine is built only for a line that may matter."""
        if source is _NIX:
            line = line or LogLine(line_number, text, source, drv)
            source, drv = self._nix_line(line)
        elif drv is None and not self._s.build_started and self._plain_nix(text):
            line = LogLine(line_number, text, _NIX)
            source, drv = self._nix_line(line)
        search = _BUILD_SEARCH if source is _BUILD else _SEARCH[source]
        if search(text) is None:
            return  # the common case, kept out of the generator below for speed
        if line is None:
            line = LogLine(line_number, text, source, drv)
        key = drv_name(drv) if drv else None
        for number, match in _matches(text, source):
            self._record(number, key, line, match)
            if RULES[number].fatal and RULES[number].role is Role.CAUSE:
                self._s.fatal_seen = True

    def _plain_nix(self, text: str) -> bool:
        """Is this unattributed line, seen before any build started, nix's own message?

        Nix reports errors found before its internal-json logger is set up (a command-line
        usage error: ``--log-format`` comes last) as plain text, which the log reader can
        only call builder output. No builder has run yet, so an ``error:`` line (and the
        indented lines continuing it) is nix's: it must not pass for a compiler error."""
        s = self._s
        if text.startswith("error:"):
            s.plain_nix_block = True
        elif not (s.plain_nix_block and text[:1] in (" ", "\t")):
            s.plain_nix_block = False
        return s.plain_nix_block

    def _nix_line(self, line: LogLine) -> tuple[Source, str | None]:
        """Follow nix's messages; a quoted log tail line counts as its builder's output."""
        if line.drv is not None:
            self._s.build_started = True
        if line.text[:1] in (" ", "\t"):
            if _TAIL.match(line.text):
                return Source.BUILD, line.drv or self._s.block_drv
        else:
            self._s.block_drv = None
        self._track_nix(line)
        return Source.NIX, line.drv

    def _track_nix(self, line: LogLine) -> None:
        body = line.text.lstrip()
        s = self._s
        if s.pending_cannot_build is not None and "Reason:" in body:
            if "dependenc" not in body and s.failing is None:
                s.failing = s.pending_cannot_build
            s.pending_cannot_build = None
        if not _NIX_FAILURE.match(body):
            return
        s.nix_failed = True
        if "dependenc" in body and "Cannot build" not in body:
            return  # "1 dependencies of derivation '…' failed to build": a dependent
        named = _FAILED_DRV.search(body)
        cannot = _CANNOT_BUILD.search(body) if named is None else None
        if named is not None:
            drv = next(g for g in named.groups() if g)
            s.block_drv = drv
            if s.failing is None:
                s.failing, s.failing_line = drv, line
        elif cannot is not None:
            s.block_drv = cannot.group(1)
            if "Reason:" in body:
                if "dependenc" not in body and s.failing is None:
                    s.failing, s.failing_line = cannot.group(1), line
            else:
                s.pending_cannot_build = cannot.group(1)
                if s.failing_line is None:
                    s.failing_line = line
        elif s.top_level is None and (top := _TOP_LEVEL_FAILED.search(body)) is not None:
            s.top_level = top.group(1)

    def _record(self, number: int, key: str | None, line: LogLine, match: re.Match[str]) -> None:
        per_drv = self._s.hits.setdefault(number, {})
        hits = per_drv.get(key)
        if hits is None:
            if len(per_drv) >= _DRVS_PER_RULE:
                oldest = next((k for k in per_drv if k is not None), None)
                per_drv.pop(oldest, None)
            groups = {
                re.sub(r"\d+$", "", name): value[:_MAX_DETAIL].strip()
                for name, value in match.groupdict().items()
                if value
            }
            per_drv[key] = _Hits([line], groups)
        elif len(hits.lines) < _HITS_PER_DRV:
            hits.lines.append(line)

    def finish(
        self, exit: ExitInfo | None = None, external: Sequence[LogLine] = ()
    ) -> Diagnosis | None:
        """The verdict. None when nothing failed (exit 0, or no proof of a failure)."""
        for line in external:
            self.feed(line)
        for line in _exit_lines(exit):
            self.feed(line)
        s = self._s
        interrupted = exit is not None and exit.interrupted_by is not None
        if not interrupted:
            if exit is not None and exit.status == 0 and exit.signal is None:
                return None
            exited_badly = exit is not None and (exit.signal is not None or exit.status is not None)
            if not (exited_badly or s.nix_failed or s.fatal_seen):
                return None
        failing = s.failing or s.pending_cannot_build or s.top_level
        key = drv_name(failing) if failing else None
        is_fetch = self._is_fetch(key)
        built = bool(s.failing or s.pending_cannot_build)
        for number, rule in enumerate(RULES):
            if rule.role is not Role.CAUSE or (rule.fetch is not None and rule.fetch != is_fetch):
                continue
            if rule.before_builds and built:
                continue
            hits = self._relevant(number, key)
            if hits:
                return self._diagnosis(rule, hits, failing)
        status = "unknown" if exit is None or exit.status is None else str(exit.status)
        return Diagnosis(
            Kind.UNKNOWN,
            "unknown.no-evidence",
            f"the build of {drv_name(failing) if failing else 'the installable'} failed "
            f"(exit status {status}) and the log names no cause",
            _evidence([s.failing_line] if s.failing_line else []),
            failing,
        )

    def _relevant(self, number: int, key: str | None) -> list[_Hits]:
        per_drv = self._s.hits.get(number)
        if not per_drv:
            return []
        if key is None:
            return list(per_drv.values())
        # A `nix build -L` prefix the reader could not map is the name without its version.
        short = pname(key)
        return [hits for k, hits in per_drv.items() if k is None or k in (key, short)]

    def _is_fetch(self, key: str | None) -> bool:
        """Is network access legitimate for the failing derivation (a fetcher)?"""
        if key is None:
            return True  # no known derivation: nothing says a sandbox was in the way
        if FETCHER_NAME.search(key):
            return True
        return bool(self._relevant(_RULE_NUMBER["network.fetcher-marker"], key))

    def _diagnosis(self, rule: Rule, hits: list[_Hits], failing: str | None) -> Diagnosis:
        lines = sorted((ln for h in hits for ln in h.lines), key=lambda ln: ln.number)
        groups = hits[0].groups
        name = drv_name(failing) if failing else None
        if name is None:
            name = next((drv_name(ln.drv) for ln in lines if ln.drv), "an unidentified derivation")
        extra: list[LogLine] = []
        if self._s.failing_line is not None:
            extra.append(self._s.failing_line)
        key = drv_name(failing) if failing else None
        also = [_RULE_NUMBER[i] for i in rule.also]
        also += [n for n, r in enumerate(RULES) if r.role is Role.SUPPORT and r.kind is rule.kind]
        for number in also:
            extra.extend(ln for h in self._relevant(number, key) for ln in h.lines)
        return Diagnosis(
            rule.kind,
            rule.id,
            _explain(rule.explanation, groups, name),
            _evidence(lines[:3] + extra),
            failing,
        )


def _matches(text: str, source: Source) -> Iterator[tuple[int, re.Match[str]]]:
    """(rule number, match) for every rule that matches this line, in table order."""
    if _SEARCH[source](text) is None:
        return
    body = text
    if source is _BUILD:
        prefix = _BODY_PREFIX.match(text)
        if prefix is not None:
            body = text[prefix.end() :]
    elif source is _NIX:
        body = text.lstrip()
    warning = source is _NIX and body.startswith("warning:")  # nix's warnings never decide
    for number in _PREFILTER[source].rule_numbers(text):
        if warning and RULES[number].role is Role.CAUSE:
            continue
        match = RULES[number].pattern.search(body)
        if match is not None:
            yield number, match


def matching_rules(line: LogLine) -> tuple[str, ...]:
    """Ids of the rules that match one line on its own (for tests and debugging)."""
    return tuple(RULES[number].id for number, _ in _matches(line.text, line.source))


class _Fill(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return {"program": "a compiler process", "code": "?", "seconds": "N"}.get(key, "")


def _explain(template: str, groups: dict[str, str], name: str) -> str:
    text = template.format_map(_Fill(groups, name=name))
    return re.sub(r" \(\)|: $", "", text).rstrip()


def _evidence(lines: Iterable[LogLine]) -> tuple[Evidence, ...]:
    seen: set[int] = set()
    out: list[Evidence] = []
    for line in lines:
        ident = line.number if line.number else -len(out) - 1
        if ident in seen:
            continue
        seen.add(ident)
        out.append(Evidence(line.number, _evidence_text(line.text)))
        if len(out) == _MAX_EVIDENCE:
            break
    return tuple(out)


def _evidence_text(text: str) -> str:
    """The line, stripped; a very long one cut, saying so and how long it was (every
    consumer, from the console to summary.json and the CI report, shows this text)."""
    text = text.strip()
    if len(text) <= _MAX_EVIDENCE_CHARS:
        return text
    return f"{text[:_MAX_EVIDENCE_CHARS].rstrip()}… (cut: the line has {len(text)} characters)"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _exit_lines(exit: ExitInfo | None) -> list[LogLine]:
    """nixbuild's knowledge of how nix ended, as external lines (number 0: not in the log)."""
    if exit is None:
        return []
    lines = []
    if exit.interrupted_by is not None:
        name = _signal_name(exit.interrupted_by)
        lines.append(f"interrupted: {name} (signal {exit.interrupted_by})")
    if exit.signal is not None:
        lines.append(f"nix was killed by signal {exit.signal} ({_signal_name(exit.signal)})")
    elif exit.status not in (None, 0):
        lines.append(f"nix exited with status {exit.status}")
    return [LogLine(0, text, Source.EXTERNAL) for text in lines]


def classify(
    lines: Iterable[LogLine], exit: ExitInfo | None = None, external: Sequence[LogLine] = ()
) -> Diagnosis | None:
    """Classify a whole log at once (see Classifier for the incremental form)."""
    classifier = Classifier()
    for line in lines:
        classifier.feed(line)
    return classifier.finish(exit, external)
