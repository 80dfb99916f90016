"""``nixbuild run -- <nix command line>``: take a CI script's nix command apart, safely.

A CI step like ``nix build -L .#checks.x86_64-linux.foo`` or ``nix develop -c pytest`` is kept
as the user wrote it; nixbuild only adds what supervision needs (bounded ``cores`` and
``max-jobs``, nix's machine-readable log format) and takes over the options that collide with
that. Anything it cannot honour is refused with a ``UsageError``, never silently dropped:

* ``--cores`` / ``-j`` / ``--max-jobs`` / ``--option cores|max-jobs`` (and the old
  ``build-cores``/``build-max-jobs`` names) are *honoured*: they become the first attempt's
  values and the ceiling. nixbuild removes them from the command line and adds its own per
  attempt, so a diagnosed out-of-memory failure can still lower them; every attempt prints the
  values it used. ``auto`` / ``0`` mean "no limit", which is what nixbuild exists to avoid: they
  are replaced by nixbuild's own choice, with a notice.
* ``--log-format X`` is replaced (nixbuild must read nix's ``internal-json`` log and renders a
  human log itself), with a notice; ``-L``/``--print-build-logs`` is compatible and kept.
  ``-Q``/``--no-build-output`` (nix-build) would hide the evidence a diagnosis needs: dropped,
  with a notice.
* refused: ``nix shell``/``nix run``/other subcommands, ``nix-shell`` and other programs,
  ``--dry-run``, ``--json``, ``--help``/``--version``, an interactive ``nix develop`` without
  ``--command`` (or a phase flag), and any option whose arity is unknown (nixbuild cannot tell
  whether the next word is its value or an installable; ``--option NAME VALUE`` always works).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import PurePath

from . import wrapflags as flags
from .config import MAX_PARALLELISM, shown
from .errors import UsageError


class WrapMode(enum.StrEnum):
    BUILD = "build"
    DEVELOP = "develop"
    NIX_BUILD = "nix-build"


@dataclass(frozen=True, slots=True)
class WrappedCommand:
    """The user's command line, minus what nixbuild takes over.

    ``args`` are the user's arguments after the subcommand (installables included, in their
    original order) without the options nixbuild took over and without the develop command;
    ``leading`` are nix's options written before the subcommand word.
    """

    mode: WrapMode
    program: str
    leading: tuple[str, ...]
    args: tuple[str, ...]
    installables: tuple[str, ...]
    files: tuple[str, ...] = ()
    develop_command: tuple[str, ...] = ()
    user_cores: int | None = None
    user_max_jobs: int | None = None
    taken_over: tuple[str, ...] = ()
    notices: tuple[str, ...] = ()
    original: tuple[str, ...] = ()

    @property
    def out_link(self) -> str | None:
        """The user's ``-o``/``--out-link``: where the result link will be (None: default)."""
        links = [self.args[i + 1] for i, a in enumerate(self.args[:-1]) if a in _OUT_LINK]
        return links[-1] if links else None

    @property
    def no_link(self) -> bool:
        """True when the user asked for no result link: success cannot be read from one."""
        return "--no-link" in self.args or "--no-out-link" in self.args

    @property
    def display_name(self) -> str:
        """What is being built, for reports: installables, else the file(s), else ``.``."""
        if self.mode is WrapMode.NIX_BUILD:
            target = " ".join(self.files) or "./default.nix"
            return f"{target} -A {' -A '.join(self.installables)}" if self.installables else target
        return " ".join(self.installables) or "."

    def argv(
        self,
        *,
        cores: int,
        max_jobs: int,
        log_args: Sequence[str] = ("--log-format", "internal-json", "-v"),
    ) -> tuple[str, ...]:
        """The command to run for one attempt: the user's options, then nixbuild's.

        nixbuild's options go *after* the user's because nix applies them in order and
        ``-L``/``--print-build-logs`` itself sets the log format (to bar-with-logs): written
        after it, ``--log-format internal-json`` wins. They still go before a ``--`` (after
        which every word is an installable) and before ``--command``.
        """
        added = ("--option", "cores", str(cores), "--option", "max-jobs", str(max_jobs), *log_args)
        cut = self.args.index("--") if "--" in self.args else len(self.args)
        args = (*self.args[:cut], *added, *self.args[cut:])
        match self.mode:
            case WrapMode.NIX_BUILD:
                return (self.program, *args)
            case WrapMode.BUILD:
                return (self.program, *self.leading, "build", *args)
            case WrapMode.DEVELOP:
                command = ("--command", *self.develop_command) if self.develop_command else ()
                return (self.program, *self.leading, "develop", *args, *command)

    def realise_argv(
        self,
        *,
        cores: int,
        max_jobs: int,
        log_args: Sequence[str] = ("--log-format", "internal-json", "-v"),
    ) -> tuple[str, ...]:
        """``nix develop``: the attempt that only builds the shell (its command is ``true``).

        Supervision (retries, degrading, fallback) applies to realising the dev shell; the
        user's own command (a test suite, say) must then run once, as written
        (``original``), so that its failures are reported as its own, never retried as if
        they were build failures.
        """
        if self.mode is not WrapMode.DEVELOP:
            return self.argv(cores=cores, max_jobs=max_jobs, log_args=log_args)
        shell_only = replace(self, develop_command=("true",))
        return shell_only.argv(cores=cores, max_jobs=max_jobs, log_args=log_args)


_OUT_LINK = ("-o", "--out-link")


def starting_parallelism(
    wrapped: WrappedCommand, cores: int | None, max_jobs: int | None
) -> tuple[int | None, int | None]:
    """Merge nixbuild's ``--cores``/``--max-jobs`` with the wrapped command's; refuse a clash."""
    for name, ours, theirs in (
        ("cores", cores, wrapped.user_cores),
        ("max-jobs", max_jobs, wrapped.user_max_jobs),
    ):
        if ours is not None and theirs is not None and ours != theirs:
            raise UsageError(
                f"{name} is {ours} for nixbuild but {theirs} in the wrapped nix command",
                hint=f"set {name} in one place only",
            )
    return (
        cores if cores is not None else wrapped.user_cores,
        max_jobs if max_jobs is not None else wrapped.user_max_jobs,
    )


def _refuse(message: str, hint: str | None = None) -> UsageError:
    return UsageError(f"nixbuild run: {message}", hint=hint)


def _expand_short(tok: str) -> list[str]:
    """``-Lv`` → ``-L -v`` and ``-j4`` → ``-j 4``, as nix's own parser does.

    Applied to one token when the scan reaches it, so words after ``--command`` or used as an
    option's value (``-c pytest -xvs``) are never split.
    """
    if m := re.fullmatch(r"-j([0-9]+|auto)", tok):
        return ["-j", m.group(1)]
    if re.fullmatch(r"-[A-Za-z]{2,}", tok):
        return [f"-{c}" for c in tok[1:]]
    return [tok]


def _parallelism(flag: str, value: str) -> int | None:
    """An int, or None for the "no limit" spellings nixbuild replaces (auto, cores 0)."""
    if value == "auto":
        return None
    # ASCII digits only: str.isdigit() and int() also take '٣', and int('²') fails.
    if not re.fullmatch(r"[0-9]+", value, re.ASCII):
        raise _refuse(f"{flag} {shown(value)} is not a number")
    if len(value.lstrip("0")) > len(str(MAX_PARALLELISM)) or int(value) > MAX_PARALLELISM:
        raise _refuse(f"{flag} must be between 1 and {MAX_PARALLELISM}, got {shown(value)}")
    number = int(value)
    if number == 0 and flag in flags.JOBS:
        raise _refuse(
            f"{flag} 0 builds nothing locally (remote builders only); nixbuild bounds local builds",
            hint="drop it, or run this command without nixbuild",
        )
    return None if number == 0 else number


@dataclass
class _State:
    """Mutable scratch space of one parse; turned into the frozen WrappedCommand at the end."""

    args: list[str]
    positionals: list[str]
    taken: list[str]
    notices: list[str]
    attrs: list[str]
    cores: int | None = None
    jobs: int | None = None
    command: tuple[str, ...] | None = None
    phase: bool = False
    file: str | None = None


def _arity(tok: str, tables: tuple[frozenset[str], ...]) -> int:
    zero, one, two = tables
    if tok in ("--option", *two):
        return 2
    if tok in ("--cores", "--max-jobs", "-j", "--log-format", *one):
        return 1
    if tok in ("-Q", *zero) or tok.startswith("--no-"):
        return 0  # nix's --no-NAME forms are always booleans
    raise _refuse(
        f"unknown option {tok}: nixbuild cannot tell whether it takes a value",
        hint="write nix settings as `--option NAME VALUE`, or use `nixbuild build -- ARGS`",
    )


def _take_over(key: str, words: list[str], st: _State, develop: bool) -> bool:
    """Record an option nixbuild replaces with its own; False when it is the user's to keep."""
    spelled = " ".join(words)
    if key in flags.CORES or key in flags.JOBS:
        number = _parallelism(key, words[-1])
        if number is None:
            st.notices.append(f"`{spelled}` means no limit; nixbuild chooses a bounded value")
        elif key in flags.CORES:
            st.cores = number
        else:
            st.jobs = number
    elif key in ("--log-format", "--option log-format"):
        st.notices.append(
            f"`{spelled}` replaced: nixbuild reads nix's internal-json log "
            "and prints the build log itself"
        )
    elif key in ("-Q", "--no-build-output") and not develop:
        st.notices.append(f"`{spelled}` dropped: nixbuild needs the build output to diagnose")
    else:
        return False
    st.taken.append(spelled)
    return True


def _consume(
    tokens: list[str], i: int, st: _State, tables: tuple[frozenset[str], ...], develop: bool
) -> int:
    """Handle the option at ``tokens[i]``; returns the index after it and its values."""
    tokens[i : i + 1] = _expand_short(tokens[i])
    tok = tokens[i]
    if tok in flags.REFUSED:
        raise _refuse(f"{tok} cannot be supervised: {flags.REFUSED[tok]}")
    if develop and tok in ("-c", "--command"):
        if i + 1 >= len(tokens):
            raise _refuse(f"{tok} needs a program to run")
        st.command = tuple(tokens[i + 1 :])
        return len(tokens)
    arity = _arity(tok, tables)
    words = tokens[i : i + 1 + arity]
    if len(words) <= arity:
        raise _refuse(f"{tok} needs {arity} value{'s' if arity > 1 else ''}")
    key = f"--option {words[1]}" if tok == "--option" else tok
    if not _take_over(key, words, st, develop):
        st.args += words
        if tok in ("-A", "--attr"):
            st.attrs.append(words[1])
        elif tok in ("-f", "--file"):
            st.file = words[1]
        st.phase = st.phase or tok in flags.DEVELOP_PHASES or tok == "--phase"
    return i + 1 + arity


def _scan(tokens: list[str], st: _State, tables: tuple[frozenset[str], ...], develop: bool) -> None:
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "--":
            if develop:
                raise _refuse("`--` in a nix develop command line cannot be parsed safely")
            st.args += tokens[i:]
            st.positionals += tokens[i + 1 :]
            return
        if tok.startswith("-") and tok != "-":
            i = _consume(tokens, i, st, tables, develop)
        else:
            st.args.append(tok)
            st.positionals.append(tok)
            i += 1


def _new_state() -> _State:
    return _State(args=[], positionals=[], taken=[], notices=[], attrs=[])


def _parse_nix(argv: Sequence[str]) -> WrappedCommand:
    tokens = list(argv[1:])
    common = (flags.COMMON_0, flags.COMMON_1, flags.COMMON_2)
    lead = _new_state()
    i = 0
    while i < len(tokens) and tokens[i].startswith("-"):
        i = _consume(tokens, i, lead, common, develop=False)
    if i >= len(tokens):
        raise _refuse("no nix subcommand", hint="nixbuild run -- nix build .#x")
    sub, rest = tokens[i], tokens[i + 1 :]
    if sub not in ("build", "develop"):
        hint = None
        if sub in ("shell", "run"):
            hint = f"`nix {sub}` starts a program; supervise `nix build INSTALLABLE` first"
        raise _refuse(f"`nix {sub}` is not supported (only nix build and nix develop)", hint)
    develop = sub == "develop"
    tables = (
        (
            flags.COMMON_0 | flags.DEVELOP_0,
            flags.COMMON_1 | flags.DEVELOP_1,
            flags.COMMON_2 | flags.DEVELOP_2,
        )
        if develop
        else (flags.COMMON_0 | flags.BUILD_0, flags.COMMON_1, flags.COMMON_2)
    )
    st = _new_state()
    st.cores, st.jobs = lead.cores, lead.jobs
    _scan(rest, st, tables, develop)
    if develop:
        if st.command is None and not st.phase:
            raise _refuse(
                "an interactive `nix develop` needs a terminal",
                hint="add `--command CMD` (or -c), or use `nixbuild develop` to realise the shell",
            )
        if len(st.positionals) > 1:
            raise _refuse(f"nix develop takes one installable, got {' '.join(st.positionals)}")
    return WrappedCommand(
        mode=WrapMode.DEVELOP if develop else WrapMode.BUILD,
        program=argv[0],
        leading=tuple(lead.args),
        args=tuple(st.args),
        installables=tuple(st.positionals),
        files=(st.file,) if st.file else (),
        develop_command=st.command or (),
        user_cores=st.cores,
        user_max_jobs=st.jobs,
        taken_over=(*lead.taken, *st.taken),
        notices=(*lead.notices, *st.notices),
        original=tuple(argv),
    )


def _parse_nix_build(argv: Sequence[str]) -> WrappedCommand:
    st = _new_state()
    _scan(list(argv[1:]), st, (flags.LEGACY_0, flags.LEGACY_1, flags.LEGACY_2), develop=False)
    return WrappedCommand(
        mode=WrapMode.NIX_BUILD,
        program=argv[0],
        leading=(),
        args=tuple(st.args),
        installables=tuple(st.attrs),
        files=tuple(st.positionals),
        user_cores=st.cores,
        user_max_jobs=st.jobs,
        taken_over=tuple(st.taken),
        notices=tuple(st.notices),
        original=tuple(argv),
    )


def parse_wrapped(argv: Sequence[str]) -> WrappedCommand:
    """Parse the command after ``nixbuild run --``; raise UsageError for what we cannot honour."""
    if not argv:
        raise _refuse("no command given", hint="nixbuild run -- nix build .#x")
    name = PurePath(argv[0]).name
    if name == "nix":
        return _parse_nix(argv)
    if name == "nix-build":
        return _parse_nix_build(argv)
    if name in flags.OTHER_PROGRAMS:
        raise _refuse(flags.OTHER_PROGRAMS[name])
    raise _refuse(
        f"{argv[0]!r} is not a nix build command",
        hint="wrap `nix build …`, `nix develop … --command …` or `nix-build …`",
    )
