"""Nix's internal-json events (logevents.py) → human log lines and build state.

``LogState`` folds events into what the rest of nixbuild needs: the human-readable log
(the same shape as ``nix build -L``: ``name> text`` for builder output), which derivation
each build activity belongs to, the current phase, overall progress, and nix's own error
messages. Memory is bounded: finished activities are forgotten and tails are deques.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .logevents import (
    ACT_BUILD,
    ACT_BUILDS,
    HEADS,
    LVL_INFO,
    BuildLogLine,
    Event,
    Message,
    Plain,
    Progress,
    SetPhase,
    Start,
    Stop,
    build_line_parts,
    log_prefix,
    new_head,
    parse_json_line,
    parse_line,
    strip_ansi,
)
from .model import LogLine, Source
from .textlog import TextLogReader


@dataclass(slots=True)
class HumanLine:
    """A line of the human-readable log as ``LogState.apply`` produces it, not yet numbered.

    Its consumer numbers it (into a ``LogLine``). One is made per line of the build, so it
    is not frozen: a frozen dataclass costs three times as much to make."""

    text: str
    source: Source = Source.BUILD
    drv: str | None = None


_BUILD, _NIX = Source.BUILD, Source.NIX  # enum attribute access costs ≈100 ns on 3.11


@dataclass(slots=True)
class BuildStatus:
    """Overall progress as nix reports it on the top-level "builds" activity."""

    done: int = 0
    expected: int = 0
    running: int = 0
    failed: int = 0


@dataclass(slots=True)
class LogState:
    """Folds events into human lines and a bounded picture of the build's state."""

    tail_lines: int = 40
    activities: dict[int, Start] = field(default_factory=dict)
    drv_of: dict[int, str] = field(default_factory=dict)
    phase_of: dict[str, str] = field(default_factory=dict)
    # Tails of the most recently started derivations only: a 1000-derivation closure must
    # not keep 1000 tails (memory stays flat in lines *and* in derivations).
    tails: OrderedDict[str, deque[str]] = field(default_factory=OrderedDict)
    max_tails: int = 64
    builds: BuildStatus = field(default_factory=BuildStatus)

    def running_drvs(self) -> list[str]:
        return [self.drv_of[i] for i in self.activities if i in self.drv_of]

    def apply(self, event: Event) -> list[HumanLine]:
        """Update state; return the human log lines this event contributes."""
        if type(event) is BuildLogLine:  # nearly every event: tested first, for speed
            return [self._fold_build_text(event.id, event.text)]
        return self._apply_other(event)

    def apply_lines(self, raws: Iterable[str]) -> list[HumanLine]:
        """``apply(parse_line(raw))`` for each raw line, concatenated: the supervisor's path.

        A builder's output line (nearly every line of a big build) is folded straight from
        its parts, without an event object and a second call per line; a property test
        holds this to the per-line path.
        """
        out: list[HumanLine] = []
        for raw in raws:
            parts = build_line_parts(raw)
            if parts is None:
                out += self.apply(parse_json_line(raw))
            else:
                out.append(self._fold_build_text(*parts))
        return out

    def _apply_other(self, event: Event) -> list[HumanLine]:
        match event:
            case Start():
                return self._start(event)
            case Stop(id=act_id):
                self.activities.pop(act_id, None)
                drv = self.drv_of.pop(act_id, None)
                if drv is not None:
                    self.phase_of.pop(drv, None)
            case BuildLogLine(id=act_id, text=text):  # a subclass
                return [self._fold_build_text(act_id, text)]
            case SetPhase(id=act_id, phase=phase):
                drv = self._drv_for(act_id)
                if drv is not None:
                    self.phase_of[drv] = phase
                    return [HumanLine(f"{log_prefix(drv)}> Running phase: {phase}", _BUILD, drv)]
            case Progress(id=act_id, done=done, expected=exp, running=run, failed=failed):
                start = self.activities.get(act_id)
                if start is not None and start.type == ACT_BUILDS:
                    self.builds = BuildStatus(done, exp, run, failed)
            case Message(level=level, text=text) if level <= LVL_INFO:
                return [HumanLine(part, _NIX) for part in text.splitlines() or [""]]
            case Plain(text=text):
                return [HumanLine(strip_ansi(text), _BUILD)]
        return []

    def _start(self, event: Start) -> list[HumanLine]:
        self.activities[event.id] = event
        fields = event.fields
        if event.type == ACT_BUILD and fields and isinstance(fields[0], str):
            drv = fields[0]
            self.drv_of[event.id] = drv
            self._tail(drv)
            text = f"{event.text}..." if event.text else f"building '{drv}'..."
            return [HumanLine(text, _NIX, drv)]
        if event.text and event.level <= LVL_INFO:
            return [HumanLine(event.text, _NIX)]
        return []

    def _fold_build_text(self, act_id: int, text: str) -> HumanLine:
        """A builder's line: into its derivation's tail, and out as ``name> text``."""
        drv = self.drv_of.get(act_id)  # the usual case: the build activity itself
        if drv is None:
            drv = self._drv_for(act_id)  # a child activity (newer nix), or none at all
            if drv is None:
                return HumanLine(text, _BUILD)
        self._tail(drv).append(text)
        return HumanLine((HEADS.get(drv) or new_head(drv)) + text, _BUILD, drv)

    def _tail(self, drv: str) -> deque[str]:
        tail = self.tails.get(drv)
        if tail is None:
            tail = self.tails[drv] = deque(maxlen=self.tail_lines)
            while len(self.tails) > self.max_tails:
                self.tails.popitem(last=False)
        return tail

    def _drv_for(self, act_id: int) -> str | None:
        """The derivation an activity belongs to, following ``parent`` links (newer nix)."""
        seen = 0
        current: int | None = act_id
        while current is not None and seen < 16:
            drv = self.drv_of.get(current)
            if drv is not None:
                return drv
            start = self.activities.get(current)
            current = start.parent if start is not None else None
            seen += 1
        return None


def read_log_lines(raw: Iterable[str]) -> Iterator[LogLine]:
    """Any saved log → numbered LogLines: internal-json lines are decoded, others are text.

    Line numbers are those of the input, so evidence points back into the file given.
    """
    state = LogState()
    text_reader = TextLogReader()
    for number, raw_line in enumerate(raw, start=1):
        line = raw_line.rstrip("\r\n")
        event = parse_line(line)
        if isinstance(event, Plain):
            yield text_reader.line(number, line)
            continue
        for produced in state.apply(event):
            yield LogLine(number, produced.text, produced.source, produced.drv)
