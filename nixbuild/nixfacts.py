"""What nixbuild knows about nix: its version, whether it opens the store itself or talks
to a daemon, and whether that daemon honours our ``--option`` settings.

The version is remembered per nix executable. Every build used to start ``nix --version``
before the build itself: a process start (15-25 ms here) on every run's critical path, to
learn something that changes only when the executable does. The answer is kept in the
state directory, keyed by the executable that ``PATH`` finds: its resolved path and its
file identity (device, inode, size, mtime). An upgrade replaces the file (a distribution
package) or the store path behind the symlink (NixOS, a nix profile), and either changes
the key, so a stale answer is never used; a ``nix`` that is a wrapper script is asked
every time. ``nixbuild doctor`` always asks nix afresh.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from . import process
from .errors import NixMissingError
from .nixcmd import INSTALL_HINT, version_tuple

Runner = Callable[[list[str]], process.Completed]
CACHE_FILENAME = "nix-version.json"


def store_dir(env: Mapping[str, str] | None = None) -> Path:
    """nix's store directory: ``NIX_STORE_DIR``, else /nix/store."""
    return Path((os.environ if env is None else env).get("NIX_STORE_DIR") or "/nix/store")


def state_dir(env: Mapping[str, str]) -> Path:
    """nix's state directory (its database, daemon socket, from 2.30 its builds)."""
    return Path(env.get("NIX_STATE_DIR") or "/nix/var/nix")


def parse_nix_version(text: str) -> str | None:
    """``nix (Nix) 2.8.0`` → ``2.8.0``; None when the text is not a version line."""
    words = text.split()
    return words[-1] if words and words[-1][:1].isdigit() else None


def executable_key(env: Mapping[str, str]) -> str | None:
    """The identity of the ``nix`` that ``PATH`` finds; None when there is none, or when it
    is a script: a wrapper stays the same file while the nix it runs is upgraded, so its
    answer is never remembered."""
    found = shutil.which("nix", path=env.get("PATH", os.defpath))
    if found is None:
        return None
    resolved = Path(found).resolve()
    try:
        with resolved.open("rb") as f:
            if f.read(2) == b"#!":
                return None
            st = os.fstat(f.fileno())
    except OSError:
        return None
    return f"{resolved}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def nix_version(run: Runner, env: Mapping[str, str], cache_file: Path | None = None) -> str | None:
    """The installed nix's version (``2.8.0``), or None when nix is missing or broken.

    With ``cache_file``, a version already read for this very executable is reused; a new
    answer is stored there. A cache that cannot be read or written is ignored: it only
    saves time, it never changes an answer.
    """
    key = executable_key(env) if cache_file is not None else None
    if cache_file is not None and key is not None:
        remembered = _read(cache_file).get(key)
        if isinstance(remembered, str) and parse_nix_version(remembered) == remembered:
            return remembered  # only what this module wrote: a bare version
    done = _run(run, ["nix", "--version"])
    version = parse_nix_version(done.stdout) if done is not None and done.ok else None
    if version is not None and cache_file is not None and key is not None:
        _write(cache_file, {key: version})  # one executable at a time: the file stays tiny
    return version


def missing_nix_error() -> NixMissingError:
    """What to say when no version could be read: no nix on PATH, or one that does not run."""
    found = shutil.which("nix")
    if found is not None:  # there, but `nix --version` did not run or said nothing usable
        return NixMissingError(
            f"{found} does not work (`nix --version` failed or did not answer in time)",
            hint="run `nix --version` to see why; reinstall Nix if it cannot start",
        )
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        unusable = Path(directory or ".") / "nix"
        if unusable.exists():  # which() skips it: a directory, or a file without x
            return NixMissingError(
                f"{unusable} is on PATH but is not an executable program",
                hint="fix its permissions (chmod +x) or remove it; " + INSTALL_HINT,
            )
    return NixMissingError("nix is not installed (not found on PATH)", hint=INSTALL_HINT)


def _read(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, str]) -> None:
    """Atomically (a reader never sees half a file); failures are ignored (see above)."""
    # Imported only when a new version is stored (rundir brings structlog, which `doctor`
    # and the version probe do not need otherwise).
    from .rundir import write_json_atomic  # noqa: PLC0415

    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, data)


# --- store mode and trust ---------------------------------------------------------------


def parse_nix_config(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if sep and key and " " not in key.strip():
            out[key.strip()] = value.strip()
    return out


def store_mode(nix_remote: str | None, state_writable: bool, daemon_socket: bool) -> str:
    """Whether nix talks to a daemon or opens the store itself (nix's own "auto" rule)."""
    if nix_remote in ("daemon",) or (nix_remote or "").startswith("unix://"):
        return "daemon"
    if nix_remote in (None, "", "auto") and not state_writable and daemon_socket:
        return "daemon"
    return "local"


def options_honoured(
    mode: str, user: str, groups: frozenset[str], trusted_users: str | None
) -> tuple[bool | None, str]:
    """Whether ``--option`` settings reach the builder. (honoured, why)."""
    if mode == "local":
        return True, "nix opens the store itself, so every --option applies"
    if trusted_users is None:
        return None, "could not read the daemon's trusted-users"
    entries = set(trusted_users.split())
    if "*" in entries or user in entries or any(f"@{g}" in entries for g in groups):
        return True, f"{user} is a trusted user of the nix daemon"
    return False, (
        f"{user} is not in the daemon's trusted-users: cores and max-jobs still apply, "
        "restricted settings (substituters, sandbox, …) are ignored"
    )


def _run(runner: Runner, argv: list[str]) -> process.Completed | None:
    try:
        return runner(argv)
    except process.CommandNotFound:
        return None
    except Exception:  # a probe must not crash preflight; the fact stays unknown
        return None


def user_and_groups() -> tuple[str, frozenset[str]]:
    import grp  # noqa: PLC0415 - POSIX only, like the rest of nixbuild
    import pwd  # noqa: PLC0415

    user = pwd.getpwuid(os.getuid()).pw_name
    names = set()
    for gid in os.getgroups():
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return user, frozenset(names)


def nix_config(runner: Runner) -> dict[str, str]:
    """nix's settings as it reports them; empty when it cannot say."""
    shown = _run(runner, ["nix", "--extra-experimental-features", "nix-command", "show-config"])
    if shown is None or not shown.ok:
        shown = _run(runner, ["nix", "config", "show"])
    return parse_nix_config(shown.stdout) if shown is not None and shown.ok else {}


def build_dir(
    env: Mapping[str, str], mode: str | None, version: str | None, configured: str | None
) -> Path:
    """Where nix creates the builds' temporary directories (the disk a build fills first).

    The ``build-dir`` setting when it is known (``configured``: read from nix only with a
    daemon; asking nix costs a process start before every build); else, from Nix 2.30,
    ``builds`` in the state directory; before 2.30 the TMPDIR of whoever runs the builder:
    ours when nix opens the store itself, the daemon's with a daemon. That one is not
    visible from here; a daemon started by its usual unit has none, so /tmp.
    """
    if configured:
        return Path(configured)
    if version is not None and version_tuple(version) >= (2, 30, 0):
        return state_dir(env) / "builds"
    if mode == "daemon":
        return Path("/tmp")
    return Path(env.get("TMPDIR") or "/tmp")
