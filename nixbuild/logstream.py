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

_set = object.__setattr__


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


@dataclass(frozen=True, slots=True, init=False)
class BuildLogLine:
    """A builder's output line: nearly every event of a big build, so built for speed."""

    id: int
    text: str

    def __init__(self, id: int, text: str) -> None:
        # The generated frozen __init__ looks up object.__setattr__ per field; this is the
        # same, ~25% cheaper.
        _set(self, "id", id)
        _set(self, "text", text)


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
_BUILD_LINE_START = len(_BUILD_LINE_HEAD)
_BUILD_LINE_TAIL = re.compile(r'\],"id":(\d+),"type":10[17]\}$')
# What follows the text (`],"id":2001,"type":101}`) → the activity id. A build has few
# activities, so after the first line of each this is a dict lookup instead of a regex
# match and an int(); cleared when full, so it stays small whatever the build.
_TAIL_IDS: dict[str, int] = {}
_MAX_TAIL_IDS = 1024


def _tail_id(tail: str) -> int | None:
    match = _BUILD_LINE_TAIL.match(tail)
    if match is None:
        return None
    if len(_TAIL_IDS) >= _MAX_TAIL_IDS:
        _TAIL_IDS.clear()
    act_id = _TAIL_IDS[tail] = int(match.group(1))
    return act_id


def parse_line(line: str) -> Event:
    """Parse one line of nix's stderr. Never raises."""
    if line.startswith(_BUILD_LINE_HEAD):
        try:
            text, end = scanstring(line, _BUILD_LINE_START)
        except (ValueError, IndexError):
            return parse_json_line(line)
        tail = line[end:]
        act_id = _TAIL_IDS.get(tail)
        if act_id is None:
            act_id = _tail_id(tail)
        if act_id is not None:
            return BuildLogLine(act_id, ANSI.sub("", text) if "\x1b" in text else text)
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


@functools.lru_cache(maxsize=4096)
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


# Derivation → "prefix> ", for every builder line; a run has few derivations, and the
# map is cleared when full so that it stays small whatever the closure.
_HEADS: dict[str, str] = {}
_MAX_HEADS = 4096


def _head(drv: str) -> str:
    if len(_HEADS) >= _MAX_HEADS:
        _HEADS.clear()
    head = _HEADS[drv] = f"{log_prefix(drv)}> "
    return head


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
        if type(event) is BuildLogLine:  # nearly every event: handled inline, for speed
            text = event.text
            drv = self.drv_of.get(event.id)  # the usual case: the build activity itself
            if drv is None:
                return self._build_line(event.id, text)
            tail = self.tails.get(drv)
            if tail is None:
                tail = self._tail(drv)
            tail.append(text)
            head = _HEADS.get(drv)
            if head is None:
                head = _head(drv)
            return [HumanLine(head + text, _BUILD, drv)]
        return self._apply_other(event)

    def apply_lines(self, raws: Iterable[str]) -> list[HumanLine]:
        """``apply(parse_line(raw))`` for each raw line, concatenated: the supervisor's path.

        A builder's output line (nearly every line of a big build) is parsed and folded right
        here, without an event object and two calls per line: a third off the per-line cost.
        The same steps as ``parse_line``'s fast path and ``apply``'s inline case; a property
        test holds the three to the same results.
        """
        out: list[HumanLine] = []
        drv_of, tails = self.drv_of, self.tails
        for raw in raws:
            if raw.startswith(_BUILD_LINE_HEAD):
                try:
                    text, end = scanstring(raw, _BUILD_LINE_START)
                except (ValueError, IndexError):
                    out += self.apply(parse_json_line(raw))
                    continue
                act_id = _TAIL_IDS.get(raw[end:])
                if act_id is None:
                    act_id = _tail_id(raw[end:])
                if act_id is not None:
                    if "\x1b" in text:
                        text = ANSI.sub("", text)
                    drv = drv_of.get(act_id)
                    if drv is None:
                        out += self._build_line(act_id, text)
                        continue
                    tail = tails.get(drv)
                    if tail is None:
                        tail = self._tail(drv)
                    tail.append(text)
                    head = _HEADS.get(drv)
                    if head is None:
                        head = _head(drv)
                    out.append(HumanLine(head + text, _BUILD, drv))
                    continue
            out += self.apply(parse_json_line(raw))
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
                return self._build_line(act_id, text)
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

    def _build_line(self, act_id: int, text: str) -> list[HumanLine]:
        """The general form of the inline case in ``apply``: ``act_id`` may be a child."""
        drv = self._drv_for(act_id)
        if drv is None:
            return [HumanLine(text, _BUILD)]
        tail = self.tails.get(drv)
        if tail is None:
            tail = self._tail(drv)
        tail.append(text)
        head = _HEADS.get(drv)
        if head is None:
            head = _head(drv)
        return [HumanLine(head + text, _BUILD, drv)]

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
