"""The result link (``--out-link``, a GC root): where it goes, checked before any build.

nix makes the link only after building, and fails then if the path is taken by anything
but a symlink, or cannot be created at all: hours lost for a usage error. So the path is
judged up front, and a bad one is exit 2.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UsageError
from .model import Mode
from .nixcmd import slug
from .nixfacts import store_dir
from .rundir import check_name_length


def checked_out_link(path: Path, option: str = "--out-link", *, profile: bool = False) -> Path:
    """``path`` made absolute, its directory created; UsageError when nix could not link it.

    ``profile``: a dev shell's ``--profile``, which nix keeps as a chain of its own links
    (``p -> p-1-link -> /nix/store/…``), so any symlink there is nix's to replace.
    """
    link = path.absolute()
    try:
        str(link).encode("utf-8")
    except UnicodeEncodeError:  # a directory name from the file system, not an argument
        raise UsageError(
            f"{option} {os.fsencode(link)!r}: the path is not valid UTF-8",
            hint="build from a directory whose path is UTF-8, or give --out-link PATH",
        ) from None
    check_name_length(link, option)
    # A build's result link: nix replaces only a symlink into the store (its own earlier
    # result, addPermRoot), nothing else.
    if link.is_symlink():
        taken = not profile and not str(link.readlink()).startswith(f"{store_dir()}/")
    else:
        taken = link.exists()
    if taken:
        raise UsageError(
            f"{option} {link}: exists and is not a link into the Nix store, so nix could not "
            "make it the result link (it would say so after building)",
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
