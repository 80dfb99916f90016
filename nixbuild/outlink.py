"""The result link (``--out-link``, a GC root): where it goes, checked before any build.

nix makes the link only after building, and fails then if the path is taken by anything
but a symlink, or cannot be created at all: hours lost for a usage error. So the path is
judged up front, and a bad one is exit 2.
"""

from __future__ import annotations

from pathlib import Path

from .errors import UsageError
from .model import Mode
from .nixcmd import slug
from .rundir import check_name_length


def checked_out_link(path: Path, option: str = "--out-link") -> Path:
    """``path`` made absolute, its directory created; UsageError when nix could not link it."""
    link = path.absolute()
    check_name_length(link, option)
    if link.exists() and not link.is_symlink():  # nix replaces a link, nothing else
        raise UsageError(
            f"{option} {link}: exists and is not a symlink, so nix could not make it the "
            "result link (it would say so after building)",
            hint="give a new path, or move what is there",
        )
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {link.parent} for the GC root: {exc.strerror}") from None
    return link


def default_out_link(mode: Mode, state_dir: Path, installable: str) -> Path:
    """``./result`` for a build; a dev shell's profile lives in the state directory."""
    return Path("result") if mode is Mode.BUILD else state_dir / "profiles" / slug(installable)
