"""`nixbuild init`: write a project from a template shipped with the package.

Templates are plain files under ``nixbuild/templates/NAME/`` ending in ``.in``, with
``@PLACEHOLDER@`` markers replaced by explicit string substitution (no template engine).
Every value that reaches a ``.nix`` file is validated first, so user input cannot inject
Nix code: Python versions map to a fixed attribute name, CUDA capabilities are quoted
after matching a strict pattern, and package names must be Nix attribute paths.

Writing is all or nothing: existing files are refused (unless ``force``) before anything is
written, every file is first written to a temporary file beside its target, and only when
all of them are written are they renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from .errors import UsageError

TEMPLATE_NAMES = ("pytorch-cuda",)
DEFAULT_TEMPLATE = "pytorch-cuda"
DEFAULT_PYTHON = "3.12"
# nixpkgs names its interpreters python310 … python314; older ones are gone from it.
PYTHON_MINORS = range(10, 15)

_PYTHON_VERSION = re.compile(r"3\.(\d{1,2})")
# A CUDA compute capability as nixpkgs' cudaCapabilities spells it: "8.6", "9.0a", "12.0".
_CAPABILITY = re.compile(r"\d{1,2}\.\d[a-z]?")
_NIX_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_NIX_KEYWORDS = frozenset(
    {"if", "then", "else", "assert", "with", "let", "in", "rec", "inherit", "or"}
)
_PLACEHOLDER = re.compile(r"@[A-Z][A-Z_]*@")
SYSTEM_PACKAGE_PREFIX = "pkgs."


class ProjectExists(UsageError):
    """Files of the project already exist and ``--force`` was not given."""

    def __init__(self, existing: Sequence[Path]) -> None:
        names = ", ".join(str(p) for p in existing)
        super().__init__(
            f"refusing to overwrite existing files: {names}",
            hint="pass --force to replace them, or choose another directory",
        )
        self.existing = tuple(existing)


@dataclass(frozen=True, slots=True)
class InitOptions:
    template: str = DEFAULT_TEMPLATE
    python_version: str = DEFAULT_PYTHON
    cuda_capabilities: tuple[str, ...] = ()
    python_packages: tuple[str, ...] = ()  # Nix attribute paths inside the Python package set
    system_packages: tuple[str, ...] = ()  # Nix attribute paths inside nixpkgs


def python_attribute(version: str) -> str:
    """``3.12`` → ``python312``, the nixpkgs attribute of that interpreter."""
    match = _PYTHON_VERSION.fullmatch(version.strip())
    if match is None or int(match.group(1)) not in PYTHON_MINORS:
        supported = ", ".join(f"3.{m}" for m in PYTHON_MINORS)
        raise UsageError(f"unsupported Python version {version!r}", hint=f"use one of {supported}")
    return f"python3{int(match.group(1))}"


def parse_capabilities(values: Iterable[str]) -> tuple[str, ...]:
    """``["8.6,8.9", "8.6"]`` → ``("8.6", "8.9")``: comma lists flattened, duplicates dropped."""
    result: list[str] = []
    for value in values:
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            if _CAPABILITY.fullmatch(item) is None:
                raise UsageError(
                    f"invalid CUDA capability {item!r}",
                    hint="use compute capabilities like 8.6 or 8.9,9.0 "
                    "(nvidia-smi --query-gpu=compute_cap --format=csv)",
                )
            if item not in result:
                result.append(item)
    return tuple(result)


def nix_attribute_path(name: str) -> str:
    """Validate ``name`` as a Nix attribute path (``paho-mqtt``, ``xorg.libX11``)."""
    parts = name.split(".")
    for part in parts:
        if _NIX_IDENTIFIER.fullmatch(part) is None or part in _NIX_KEYWORDS:
            raise UsageError(
                f"invalid package name {name!r}",
                hint="a package is a Nix attribute name such as 'polars' or, for a system "
                "package, 'pkgs.ffmpeg' (letters, digits, _ and -, dots between parts)",
            )
    return name


def split_extra_packages(names: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Extra packages → (Python packages, nixpkgs packages); ``pkgs.X`` names a nixpkgs one."""
    python: list[str] = []
    system: list[str] = []
    for raw in names:
        name = raw.strip()
        if name.startswith(SYSTEM_PACKAGE_PREFIX):
            target, name = system, name[len(SYSTEM_PACKAGE_PREFIX) :]
        else:
            target = python
        nix_attribute_path(name)
        if name not in target:
            target.append(name)
    return tuple(python), tuple(system)


def substitutions(options: InitOptions) -> dict[str, str]:
    python_attr = python_attribute(options.python_version)
    capabilities = parse_capabilities(options.cuda_capabilities)
    python_packages = [nix_attribute_path(n) for n in options.python_packages]
    system_packages = [nix_attribute_path(n) for n in options.system_packages]
    if capabilities:
        quoted = " ".join(f'"{c}"' for c in capabilities)
        capability_line = (
            f"          cudaCapabilities = [ {quoted} ]; # compile only for these GPUs: much faster"
        )
        capability_text = ", ".join(capabilities)
    else:
        capability_line = (
            '          # cudaCapabilities = [ "8.6" ]; # your GPU\'s: a much shorter source build'
        )
        capability_text = "all that nixpkgs supports (set cudaCapabilities to shorten the build)"
    return {
        "PYTHON_VERSION": options.python_version.strip(),
        "PYTHON_ATTR": python_attr,
        "CUDA_CAPABILITIES_LINE": capability_line,
        "CUDA_CAPABILITIES_TEXT": capability_text,
        "EXTRA_PYTHON_PACKAGES": "".join(f" ps.{n}" for n in python_packages)
        + (" " if python_packages else ""),
        "EXTRA_SYSTEM_PACKAGES": "".join(f" pkgs.{n}" for n in system_packages)
        + (" " if system_packages else ""),
    }


def substitute(text: str, values: Mapping[str, str], *, source: str) -> str:
    """Replace every ``@NAME@``; an unknown or left-over marker is a bug in the template."""
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    leftover = _PLACEHOLDER.search(text)
    if leftover is not None:
        raise AssertionError(f"template {source}: unknown placeholder {leftover.group(0)}")
    return text


def template_root(template: str) -> Traversable:
    if template not in TEMPLATE_NAMES:
        raise UsageError(
            f"unknown template {template!r}", hint=f"available: {', '.join(TEMPLATE_NAMES)}"
        )
    return resources.files("nixbuild") / "templates" / template


def _template_files(root: Traversable, prefix: str = "") -> list[tuple[str, Traversable]]:
    found: list[tuple[str, Traversable]] = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            found.extend(_template_files(entry, f"{prefix}{entry.name}/"))
        elif entry.name.endswith(".in"):
            found.append((prefix + entry.name.removesuffix(".in"), entry))
    return found


def render(options: InitOptions) -> dict[str, str]:
    """The project's files: relative POSIX path → content."""
    values = substitutions(options)
    return {
        rel: substitute(entry.read_text(encoding="utf-8"), values, source=rel)
        for rel, entry in _template_files(template_root(options.template))
    }


def existing_files(directory: Path, relative_paths: Iterable[str]) -> list[Path]:
    return [directory / rel for rel in relative_paths if (directory / rel).exists()]


def write_project(directory: Path, files: Mapping[str, str], *, force: bool) -> list[Path]:
    """Write ``files`` under ``directory``, all or nothing; return the written paths."""
    existing = existing_files(directory, files)
    not_files = [p for p in existing if not p.is_file()]
    if not_files:
        raise UsageError(f"not a regular file, cannot replace: {', '.join(map(str, not_files))}")
    if existing and not force:
        raise ProjectExists(existing)
    staged: list[tuple[Path, Path]] = []
    try:
        for rel, content in files.items():
            target = directory / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temp_name = tempfile.mkstemp(
                dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
            )
            staged.append((Path(temp_name), target))
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content)
    except OSError as exc:
        _discard(temp for temp, _ in staged)
        raise UsageError(f"cannot write the project in {directory}: {exc}") from exc
    for temp, target in staged:
        temp.chmod(0o644)
        temp.replace(target)
    return [target for _, target in staged]


def inside_git_work_tree(directory: Path) -> bool:
    """Whether ``directory`` is in a git work tree (a flake there sees only tracked files)."""
    return any((d / ".git").exists() for d in (directory.resolve(), *directory.resolve().parents))


def _discard(paths: Iterable[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()
