"""Pure argv builders for the nix commands nixbuild runs, and nix version facts."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import NixMissingError
from .model import AttemptSpec, Mode

LOG_ARGS = ("--log-format", "internal-json", "-v")
FLAKE_FEATURES = ("--extra-experimental-features", "nix-command flakes")
INSTALL_HINT = "install Nix: `sudo apt-get install nix-bin` on Debian/Ubuntu, or see https://nixos.org/download"


@dataclass(frozen=True, slots=True)
class NixInfo:
    version: tuple[int, int, int]  # for comparisons (which flags this nix needs)
    binary: str = "nix"
    label: str = ""  # the version as nix printed it ("2.24.10pre"), for the records

    @classmethod
    def from_version(cls, text: str) -> NixInfo:
        return cls(version_tuple(text), label=text)

    @property
    def needs_feature_flags(self) -> bool:
        # nix-command and flakes are experimental in every release since 2.4 (when the
        # flag appeared); passing them when already enabled is harmless.
        return self.version >= (2, 4, 0)


def version_tuple(output: str) -> tuple[int, int, int]:
    """``2.8.0``, ``nix (Nix) 2.8.0`` / ``nix (Determinate Nix 3.6.2) 2.29.0`` → (2, 8, 0)."""
    versions = re.findall(r"(\d+)\.(\d+)(?:\.(\d+))?", output)
    if not versions:
        raise NixMissingError(f"could not read the nix version from {output.strip()!r}")
    major, minor, patch = versions[-1]
    return int(major), int(minor), int(patch or 0)


def nix_prefix(nix: NixInfo) -> list[str]:
    return [nix.binary, *(FLAKE_FEATURES if nix.needs_feature_flags else ())]


def parallelism_args(spec: AttemptSpec) -> list[str]:
    return ["--option", "cores", str(spec.cores), "--option", "max-jobs", str(spec.max_jobs)]


def build_argv(
    nix: NixInfo, spec: AttemptSpec, *, out_link: Path, extra: Sequence[str] = ()
) -> list[str]:
    return [
        *nix_prefix(nix),
        "build",
        spec.installable,
        "--out-link",
        str(out_link),
        *parallelism_args(spec),
        *extra,
        # Last: nix applies options in order, and a user's -L would reset the log format.
        *LOG_ARGS,
    ]


def develop_argv(
    nix: NixInfo,
    spec: AttemptSpec,
    *,
    profile: Path,
    command: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> list[str]:
    """Realise a dev shell without entering it; ``--profile`` pins it as a GC root.

    Without a user command we run ``true``: the shell's closure is built and the profile
    written, and ``nix develop PROFILE`` enters it later without building anything.
    """
    return [
        *nix_prefix(nix),
        "develop",
        spec.installable,
        "--profile",
        str(profile),
        *parallelism_args(spec),
        *extra,
        *LOG_ARGS,
        "--command",
        *(command or ("true",)),
    ]


def attempt_argv(
    nix: NixInfo,
    mode: Mode,
    spec: AttemptSpec,
    *,
    gcroot: Path,
    command: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> list[str]:
    if mode is Mode.DEVELOP:
        return develop_argv(nix, spec, profile=gcroot, command=command, extra=extra)
    return build_argv(nix, spec, out_link=gcroot, extra=extra)


# Options of a build command line that change what an installable evaluates to, and so
# must also be given to `nix eval` when checking that a fallback exists.
_EVAL_OPTIONS = {
    "--impure": 0,
    "--offline": 0,
    "--accept-flake-config": 0,
    "--option": 2,
    "--override-input": 2,
    "--arg": 2,
    "--argstr": 2,
    "--override-flake": 2,
    "--include": 1,
    "-I": 1,
}


_PARALLELISM_FLAGS = ("--cores", "--max-jobs", "-j")
_PARALLELISM_SETTINGS = ("cores", "max-jobs")


def parallelism_in(extra: Sequence[str]) -> str | None:
    """The pass-through argument that would set cores or max-jobs behind nixbuild's back.

    Nix applies options in order, so such an argument after nixbuild's own would silently
    defeat the degrade ladder; the caller refuses it and points at --cores/--max-jobs.
    """
    for i, arg in enumerate(extra):
        if arg in _PARALLELISM_FLAGS or (arg.startswith("-j") and arg[2:].isdigit()):
            return arg
        if arg.startswith(("--cores=", "--max-jobs=")):
            return arg
        setting = extra[i + 1] if i + 1 < len(extra) else None
        if arg in ("--option", "--extra-option") and setting in _PARALLELISM_SETTINGS:
            return f"{arg} {setting}"
    return None


def eval_passthrough(extra: Sequence[str]) -> list[str]:
    """The subset of the user's extra nix arguments that matter to evaluation."""
    kept: list[str] = []
    i = 0
    while i < len(extra):
        arity = _EVAL_OPTIONS.get(extra[i])
        if arity is None:
            i += 1
            continue
        kept.extend(extra[i : i + 1 + arity])
        i += 1 + arity
    return kept


_INSTALLABLE_OK = re.compile(r"^[^\s\x00-\x1f]+$")


def check_installable(installable: str) -> str | None:
    """A reason the installable is malformed, or None. Nix itself judges the rest."""
    if not installable or not _INSTALLABLE_OK.match(installable):
        return "an installable is one word without spaces, e.g. .#default or nixpkgs#hello"
    if installable.startswith("-"):
        return "installables do not start with '-' (put nix options after --)"
    if installable.count("#") > 1:
        return "an installable has at most one '#'"
    return None


# What nix says when the installable itself does not exist (not an error inside the Nix
# code it evaluates): a flake without that attribute, a flake that is not there. These are
# the user's input errors, so they exit 2 rather than 1.
_MISSING_INSTALLABLE = re.compile(
    r"does not provide attribute|cannot find flake|does not contain a 'flake\.nix'"
    r"|error: getting status of '[^']*': No such file or directory"
    r"|error: path '[^']*' does not exist"
)


def names_missing_installable(messages: Sequence[str]) -> str | None:
    """The first of nix's messages that says the installable does not exist, if any."""
    return next((m for m in messages if _MISSING_INSTALLABLE.search(m)), None)


def slug(installable: str) -> str:
    """A file-name-safe short form: ``nixpkgs#pkgs.torch`` → ``nixpkgs-pkgs.torch``."""
    text = re.sub(r"[^A-Za-z0-9._+-]+", "-", installable).strip("-.")
    return text[:80] or "default"
