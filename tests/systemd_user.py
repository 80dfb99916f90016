"""A real systemd user manager for the tests: ``from systemd_user import user_manager``.

Machines without a running system manager (containers, CI runners) can still run
``systemd --user`` once ``/run/systemd/system/`` exists. The fixture gives it a private
``XDG_RUNTIME_DIR`` (0700; its D-Bus socket and ``systemd/private`` live there), a private
``XDG_CONFIG_HOME`` (so units are installed into a temporary directory, never the user's)
and ``XDG_DATA_HOME`` (timer stamps), points this test process at it through the
environment, and stops it after.

The manager is started inside its own cgroup (``nixbuild-test-…`` in the named systemd
hierarchy and in cgroup v2). Started in the root cgroup, a user manager takes itself for
the owner of the whole tree and moves *every* process of the machine into ``init.scope``;
in a cgroup of its own it manages only that subtree, like ``user@UID.service`` does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import require

SYSTEMD_BINARIES = ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")
CGROUP_HIERARCHIES = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup")
READY_STATES = {"running", "degraded"}


@dataclass(frozen=True)
class UserManagerHandle:
    env: dict[str, str]  # the variables that point systemctl & co. at this manager
    unit_dir: Path  # $XDG_CONFIG_HOME/systemd/user
    log: Path  # the manager's own stdout/stderr
    pid: int

    def run(self, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            list(argv),
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and done.returncode != 0:
            pytest.fail(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}{done.stdout}")
        return done

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--user", *args], check=check)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", unit, "-p", prop, "--value").stdout.strip()

    def wait_for(self, unit: str, prop: str, wanted: set[str], timeout_s: float = 60) -> str:
        """Poll a unit property until it has one of the wanted values (or fail with it)."""
        deadline = time.monotonic() + timeout_s
        value = self.show(unit, prop)
        while value not in wanted and time.monotonic() < deadline:
            time.sleep(0.1)
            value = self.show(unit, prop)
        assert value in wanted, f"{unit} {prop}={value!r}, expected one of {sorted(wanted)}"
        return value


def _systemd_binary() -> str | None:
    return next((b for b in SYSTEMD_BINARIES if os.access(b, os.X_OK)), None)


def _own_cgroups(name: str) -> list[Path]:
    """Create the manager's cgroup in each writable hierarchy; best effort."""
    made = []
    for root in CGROUP_HIERARCHIES:
        hierarchy = Path(root)
        if not (hierarchy / "cgroup.procs").exists():
            continue  # e.g. the tmpfs that holds the hierarchies on a hybrid layout
        with contextlib.suppress(OSError):
            (hierarchy / name).mkdir(exist_ok=True)
            made.append(hierarchy / name)
    return made


def _remove_cgroup(path: Path) -> None:
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


@pytest.fixture(scope="module")
def user_manager() -> Iterator[UserManagerHandle]:
    require("systemctl")
    binary = _systemd_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd is required in CI (run .ci/bootstrap test)")
        pytest.skip("systemd is not installed")
    with contextlib.suppress(OSError):
        Path("/run/systemd/system").mkdir(parents=True, exist_ok=True)
    # Short path: the runtime dir holds unix sockets (108-byte limit).
    base = Path(tempfile.mkdtemp(prefix="nbsd-"))
    runtime, config = base / "run", base / "config"
    runtime.mkdir(mode=0o700)
    runtime.chmod(0o700)
    (config / "systemd" / "user").mkdir(parents=True)
    env = {
        "XDG_RUNTIME_DIR": str(runtime),
        "DBUS_SESSION_BUS_ADDRESS": f"unix:path={runtime}/bus",
        "XDG_CONFIG_HOME": str(config),
        # Persistent= timers keep their last-trigger stamps under XDG_DATA_HOME: a stamp left
        # in the real home by an earlier run would make a timer of the same job catch up
        # (start its service) the moment a later test installs it.
        "XDG_DATA_HOME": str(base / "data"),
    }
    cgroups = _own_cgroups(f"nixbuild-test-{os.getpid()}-{base.name}")

    def enter_cgroups() -> None:
        for cgroup in cgroups:
            with contextlib.suppress(OSError):
                (cgroup / "cgroup.procs").write_text("0")

    log = base / "manager.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [binary, "--user"],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=enter_cgroups,  # noqa: PLW1509 - it only writes cgroup.procs
        )
    handle = UserManagerHandle(env, config / "systemd" / "user", log, proc.pid)
    try:
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline and proc.poll() is None:
            state = handle.systemctl("is-system-running", check=False).stdout.strip()
            if state in READY_STATES:
                break
            time.sleep(0.1)
        if state not in READY_STATES:
            pytest.fail(f"systemd --user did not come up (state {state!r}): {log.read_text()}")
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            yield handle
    finally:
        proc.terminate()  # the manager runs exit.target: stops its units, then itself
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for cgroup in cgroups:
            _remove_cgroup(cgroup)
        shutil.rmtree(base, ignore_errors=True)
