"""Nix's ``--log-format internal-json`` lines → typed events.

``parse_line`` turns one line of nix's stderr into one event from a closed union of small
frozen dataclasses. It never raises: unknown activity or result types become ``Other``,
malformed JSON and anything that is not an ``@nix`` line become ``Plain``. Folding the
events into human log lines and build state is logstream.py.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]

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


def _new_tail_id(tail: str) -> int | None:
    match = _BUILD_LINE_TAIL.match(tail)
    if match is None:
        return None
    if len(_TAIL_IDS) >= _MAX_TAIL_IDS:
        _TAIL_IDS.clear()
    act_id = _TAIL_IDS[tail] = int(match.group(1))
    return act_id


def build_line_parts(line: str) -> tuple[int, str] | None:
    """A builder's output line as nix writes it → (activity id, text); None for any other.

    The fast path for nearly every line of a big build: the text is read with json's own
    string scanner and the id from a memo of the line's fixed tail, without decoding the
    whole object. None sends the line to ``parse_json_line``, which decides.
    """
    if not line.startswith(_BUILD_LINE_HEAD):
        return None
    try:
        text, end = scanstring(line, _BUILD_LINE_START)
    except (ValueError, IndexError):
        return None
    tail = line[end:]
    act_id = _TAIL_IDS.get(tail)
    if act_id is None:
        act_id = _new_tail_id(tail)
    if act_id is None:
        return None
    return act_id, strip_ansi(text)


def parse_line(line: str) -> Event:
    """Parse one line of nix's stderr. Never raises."""
    parts = build_line_parts(line)
    return parse_json_line(line) if parts is None else BuildLogLine(*parts)


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
HEADS: dict[str, str] = {}
_MAX_HEADS = 4096


def new_head(drv: str) -> str:
    if len(HEADS) >= _MAX_HEADS:
        HEADS.clear()
    head = HEADS[drv] = f"{log_prefix(drv)}> "
    return head
