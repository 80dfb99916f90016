"""Plain-text build logs → LogLines, whatever tool or CI runner wrote them.

Understands `nix build -L` output and nixbuild's own attempt logs (``name> text`` for
builder output, nix's messages unprefixed), legacy ``nix-build`` output (builder output
unprefixed and interleaved with nix's lines, which are then recognised by their shape),
nix's multi-line error blocks (indented continuation lines, ``> `` log-tail lines),
CI-runner prefixes (ISO timestamps, ``##[error]``, ``::error::``, journald) and ANSI
colour codes.

The reader is stateful because two facts come from earlier lines: which store path a
``name> `` prefix stands for (the ``building '…-name.drv'`` line), and whether an indented
line continues one of nix's error messages (and which derivation's log tail it quotes).
Memory stays bounded: the name → path map is capped.
"""

from __future__ import annotations

import re
from collections import OrderedDict

from .model import LogLine, Source

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-B]")

# Prefixes CI systems and log collectors put in front of every line. Stripped repeatedly
# because they stack (a GitHub timestamp before a `##[error]` marker).
_CI_PREFIX = re.compile(
    r"^(?:"
    r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?\s"  # GitHub, GitLab
    r"|##\[(?:error|warning|notice|debug|group|endgroup|section|command)\]"  # Azure/GitHub
    r"|::(?:error|warning|notice|debug)(?: [^:]*)?::"  # GitHub workflow commands
    r"|[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ [\w.@/-]+(?:\[\d+\])?: "  # journald/syslog
    r")+"
)

# A store path of a derivation, in any store directory (tests use their own).
DRV_PATH = re.compile(
    r"(/[^\s'\"`\u2018\u2019]*?/[0-9a-z]{32}-([^\s'\"`\u2018\u2019/]+?)\.drv)(?:\^\S*)?"
)

# `nix build -L` / nixbuild attempt logs: "name> text" (name as nix allows in store paths).
_NAME_PREFIX = re.compile(r"^([A-Za-z0-9+._?=-][A-Za-z0-9+._?=-]{0,210})> ?")
# A line quoted from a builder's log tail inside one of nix's error messages.
_TAIL_PREFIX = re.compile(r"^\s+> ?")

_Q = r"['\u2018`\"]"  # nix has quoted with '…', with curly quotes and with `…' over the years

# Lines nix itself prints (as opposed to builder output), recognised by their start. Needed
# for legacy nix-build logs, where builder output is not prefixed.
_NIX_LINE = re.compile(
    r"^(?:error(?: \(ignored\))?:|warning:|note:|trace:|evaluation warning:"
    rf"|building {_Q}|building path\(s\)|these (?:\d+ )?(?:derivations|paths) will be"
    r"|this (?:derivation|path) will be|copying path|copying \d+ paths|downloading {_Q}"
    rf"|unpacking {_Q}|querying info|evaluating file|builder for {_Q}|build of {_Q}"
    rf"|cannot build derivation|Cannot build {_Q}|hash mismatch in fixed-output derivation"
    rf"|building of {_Q}|checking outputs of|repairing outputs of|cannot build on {_Q}"
    r"|Failed to find a machine for remote build|unexpected error in download thread"
    r"|killing process|For full logs, run|\(use {_Q}--show-trace|don't know how to build"
    r"|waiting for (?:lock|a machine|a free build user)|output path {_Q}"
    r")"
)

# Nix lines that open a multi-line message whose indented continuation lines belong to it.
_NIX_BLOCK_START = re.compile(
    rf"^(?:error\b|builder for {_Q}|build of {_Q}|Cannot build {_Q}|cannot build derivation"
    r"|hash mismatch in fixed-output derivation)"
)

_MAX_NAMES = 50_000


_VERSION_START = re.compile(r"-(?=\d)")


def pname(name: str) -> str:
    """Nix's split of a derivation name: ``python3.12-torch-2.5.1`` → ``python3.12-torch``."""
    match = _VERSION_START.search(name)
    return name[: match.start()] if match else name


def _tail_owner(text: str) -> str | None:
    """The derivation a nix error message is about, when it quotes that one's log tail."""
    if "dependenc" in text:  # "1 dependencies of derivation … failed": not the builder
        return None
    match = DRV_PATH.search(text)
    return match.group(1) if match else None


def clean(text: str) -> str:
    """Strip the line ending, ANSI codes and CI-runner prefixes."""
    text = text.rstrip("\r\n")
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    if "\r" in text:  # progress bars redraw with CR; the last redraw is what stays visible
        text = text.rsplit("\r", 1)[-1]
    if text[:1].isdigit() or text[:1] in "#:ADFJMNOS":
        text = _CI_PREFIX.sub("", text, count=1)
    return text


class TextLogReader:
    """Turns plain-text log lines into LogLines; feed lines in order."""

    def __init__(self) -> None:
        self._drv_by_name: OrderedDict[str, str] = OrderedDict()
        self._in_nix_block = False
        self._block_drv: str | None = None

    def _remember(self, path: str, name: str) -> None:
        # `nix build -L` prefixes with the name without its version ("hello>" for
        # hello-2.12.1); nixbuild's attempt logs use the full name. Accept both.
        for key in {name, pname(name)}:
            self._drv_by_name[key] = path
            self._drv_by_name.move_to_end(key)
        while len(self._drv_by_name) > _MAX_NAMES:
            self._drv_by_name.popitem(last=False)

    def drv_for_name(self, name: str) -> str | None:
        return self._drv_by_name.get(name)

    def line(self, number: int, text: str) -> LogLine:
        text = clean(text)
        if not text.strip():
            # Blank lines inside one of nix's messages belong to it; elsewhere they are
            # builder output. Neither carries evidence.
            source = Source.NIX if self._in_nix_block else Source.BUILD
            return LogLine(number, text, source)
        if text[0] in " \t":
            if self._in_nix_block:
                if _TAIL_PREFIX.match(text):
                    return LogLine(number, text, Source.BUILD, self._block_drv)
                return LogLine(number, text, Source.NIX)
            return LogLine(number, text, Source.BUILD)
        self._in_nix_block = False
        prefixed = _NAME_PREFIX.match(text)
        if prefixed is not None:
            name = prefixed.group(1)
            return LogLine(number, text, Source.BUILD, self._drv_by_name.get(name, name))
        if _NIX_LINE.match(text):
            return self._nix_line(number, text)
        return LogLine(number, text, Source.BUILD)

    def _nix_line(self, number: int, text: str) -> LogLine:
        drv: str | None = None
        if text.startswith(("building ", "checking outputs", "repairing outputs")):
            match = DRV_PATH.search(text)
            if match is not None:
                drv = match.group(1)
                self._remember(drv, match.group(2))
        if _NIX_BLOCK_START.match(text):
            self._in_nix_block = True
            self._block_drv = _tail_owner(text)
        return LogLine(number, text, Source.NIX, drv)
