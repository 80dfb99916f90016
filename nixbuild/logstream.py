"""Nix's ``--log-format internal-json`` stream → typed events → human log lines.

``parse_line`` turns one line of nix's stderr into one event from a closed union of small
frozen dataclasses. It never raises: unknown activity or result types become ``Other``,
malformed JSON and anything that is not an ``@nix`` line become ``Plain``.

``LogState`` folds events into what the rest of nixbuild needs: the human-readable log
(the same shape as ``nix build -L``: ``name> text`` for builder output), which derivation
each build activity belongs to, the current phase, overall progress, and nix's own error
messages. Memory is bounded: finished activities are forgotten and tails are deques.
"""

from __future__ import annotations

import functools
import json
import re
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]

from .model import LogLine, Source
from .textlog import TextLogReader

PREFIX = "@nix "
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")

# Activity and result type numbers from nix's src/libutil/logging.hh. They have only been
# appended to over the years (2.8 … current), so one table serves every version.
ACT_FILE_TRANSFER = 101
ACT_REALISE = 102
ACT_COPY_PATHS = 103
ACT_BUILDS = 104
ACT_BUILD = 105
ACT_SUBSTITUTE = 108
ACT_POST_BUILD_HOOK = 110
RES_BUILD_LOG_LINE = 101
RES_SET_PHASE = 104
RES_PROGRESS = 105
RES_SET_EXPECTED = 106
RES_POST_BUILD_LOG_LINE = 107

LVL_ERROR = 0
LVL_WARN = 1
LVL_INFO = 3  # messages above this verbosity (-v and up) stay out of the human log


@dataclass(frozen=True, slots=True)
class Start:
    id: int
    type: int
    level: int
    text: str
    parent: int | None
    fields: tuple[object, ...] = ()


@dataclass(frozen=True, slots=True)
class Stop:
    id: int


@dataclass(frozen=True, slots=True)
class BuildLogLine:
    id: int
    text: str


@dataclass(frozen=True, slots=True)
class SetPhase:
    id: int
    phase: str


@dataclass(frozen=True, slots=True)
class Progress:
    id: int
    done: int
    expected: int
    running: int
    failed: int


@dataclass(frozen=True, slots=True)
class SetExpected:
    id: int
    activity_type: int
    expected: int


@dataclass(frozen=True, slots=True)
class Message:
    level: int
    text: str


@dataclass(frozen=True, slots=True)
class Other:
    """An ``@nix`` object of a kind this version of nixbuild does not know (newer nix)."""

    action: str
    data: dict[str, object]


@dataclass(frozen=True, slots=True)
class Plain:
    """A line that is not internal-json: a `--command` program's output, garbage, a bad line."""

    text: str


Event = Start | Stop | BuildLogLine | SetPhase | Progress | SetExpected | Message | Other | Plain


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text) if "\x1b" in text else text


def _int(value: object, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


# The one shape that makes up nearly all of a big build's log, as nix prints it (its JSON
# keys come sorted): a builder's output line. Recognised without a full JSON parse, which
# roughly doubles the throughput of the hot path; any other spelling takes the general path.
_BUILD_LINE_HEAD = '@nix {"action":"result","fields":["'
_BUILD_LINE_TAIL = re.compile(r'\],"id":(\d+),"type":10[17]\}$')


def _fast_build_line(line: str) -> BuildLogLine | None:
    try:
        text, end = scanstring(line, len(_BUILD_LINE_HEAD))
    except (ValueError, IndexError):
        return None
    match = _BUILD_LINE_TAIL.match(line, end)
    if match is None:
        return None
    return BuildLogLine(int(match.group(1)), strip_ansi(text))


def parse_line(line: str) -> Event:
    """Parse one line of nix's stderr. Never raises."""
    if line.startswith(_BUILD_LINE_HEAD) and (fast := _fast_build_line(line)) is not None:
        return fast
    return parse_json_line(line)


def parse_json_line(line: str) -> Event:
    """``parse_line`` without the fast path: the reference the fast path must agree with."""
    if not line.startswith(PREFIX):
        return Plain(line)
    try:
        data = json.loads(line[len(PREFIX) :])
    except (ValueError, RecursionError):
        return Plain(line)
    if not isinstance(data, dict):
        return Plain(line)
    action = data.get("action")
    fields = data.get("fields")
    fields = tuple(fields) if isinstance(fields, list) else ()
    act_id = _int(data.get("id"))
    match action:
        case "start":
            parent = data.get("parent")
            return Start(
                act_id,
                _int(data.get("type")),
                _int(data.get("level"), LVL_INFO),
                strip_ansi(str(data.get("text", ""))),
                parent if isinstance(parent, int) and parent != 0 else None,
                fields,
            )
        case "stop":
            return Stop(act_id)
        case "msg":
            return Message(_int(data.get("level"), LVL_INFO), strip_ansi(str(data.get("msg", ""))))
        case "result":
            return _parse_result(act_id, _int(data.get("type"), -1), fields, data)
    return Other(str(action), data)


def _parse_result(
    act_id: int, rtype: int, fields: tuple[object, ...], data: dict[str, object]
) -> Event:
    if rtype in (RES_BUILD_LOG_LINE, RES_POST_BUILD_LOG_LINE) and fields:
        return BuildLogLine(act_id, strip_ansi(str(fields[0])))
    if rtype == RES_SET_PHASE and fields:
        return SetPhase(act_id, str(fields[0]))
    if rtype == RES_PROGRESS and len(fields) >= 4:
        done, expected, running, failed = (_int(f) for f in fields[:4])
        return Progress(act_id, done, expected, running, failed)
    if rtype == RES_SET_EXPECTED and len(fields) >= 2:
        return SetExpected(act_id, _int(fields[0]), _int(fields[1]))
    return Other("result", data)


def drv_name(drv: str) -> str:
    """``/nix/store/<hash>-python3.12-torch-2.5.1.drv`` → ``python3.12-torch-2.5.1``."""
    base = drv.rsplit("/", 1)[-1]
    base = base.removesuffix(".drv")
    _, sep, rest = base.partition("-")
    return rest if sep and rest else base


@functools.lru_cache(maxsize=4096)  # called for every build log line; a run has few drvs
def log_prefix(drv: str) -> str:
    """The prefix ``nix build -L`` puts before builder output: the name without version.

    Same rule as nix's DrvName: the version starts at the first '-' not followed by a
    letter (``python3.12-torch-2.5.1`` → ``python3.12-torch``).
    """
    name = drv_name(drv)
    for i, char in enumerate(name[:-1]):
        if char == "-" and not name[i + 1].isalpha():
            return name[:i]
    return name


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

    def apply(self, event: Event) -> list[LogLine]:
        """Update state; return the human log lines this event contributes (numbered 0)."""
        match event:
            case Start():
                return self._start(event)
            case Stop(id=act_id):
                self.activities.pop(act_id, None)
                drv = self.drv_of.pop(act_id, None)
                if drv is not None:
                    self.phase_of.pop(drv, None)
            case BuildLogLine(id=act_id, text=text):
                return self._build_line(act_id, text)
            case SetPhase(id=act_id, phase=phase):
                drv = self._drv_for(act_id)
                if drv is not None:
                    self.phase_of[drv] = phase
                    return [
                        LogLine(0, f"{log_prefix(drv)}> Running phase: {phase}", Source.BUILD, drv)
                    ]
            case Progress(id=act_id, done=done, expected=exp, running=run, failed=failed):
                start = self.activities.get(act_id)
                if start is not None and start.type == ACT_BUILDS:
                    self.builds = BuildStatus(done, exp, run, failed)
            case Message(level=level, text=text) if level <= LVL_INFO:
                return [LogLine(0, part, Source.NIX) for part in text.splitlines() or [""]]
            case Plain(text=text):
                return [LogLine(0, strip_ansi(text), Source.BUILD)]
        return []

    def _start(self, event: Start) -> list[LogLine]:
        self.activities[event.id] = event
        fields = event.fields
        if event.type == ACT_BUILD and fields and isinstance(fields[0], str):
            drv = fields[0]
            self.drv_of[event.id] = drv
            self._tail(drv)
            text = f"{event.text}..." if event.text else f"building '{drv}'..."
            return [LogLine(0, text, Source.NIX, drv)]
        if event.text and event.level <= LVL_INFO:
            return [LogLine(0, event.text, Source.NIX)]
        return []

    def _build_line(self, act_id: int, text: str) -> list[LogLine]:
        drv = self._drv_for(act_id)
        if drv is None:
            return [LogLine(0, text, Source.BUILD)]
        self._tail(drv).append(text)
        return [LogLine(0, f"{log_prefix(drv)}> {text}", Source.BUILD, drv)]

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
