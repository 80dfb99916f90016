"""Shared fixtures: a real Nix with an isolated store, and the fixture flake.

Nix is real in these tests. Each test session gets its own store, state and config
directories (NIX_STORE_DIR, NIX_STATE_DIR, NIX_CONF_DIR), never the user's, with
substituters and the flake registry off so nothing waits on the network.
Tests that need Nix skip only when the machine has none, and never when CI=true.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# In CI the property tests draw the same examples every run (a red CI must be reproducible,
# not a dice roll); locally they explore new examples each time.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_FLAKE = FIXTURES / "flake"

NIX_CONF = """\
sandbox = false
substituters =
flake-registry =
build-users-group =
experimental-features = nix-command flakes
connect-timeout = 2
"""


# CI=true (set when CI runs these tests) switches nixbuild to its CI renderer; tests that
# check the terminal/plain output run nixbuild without these (the CI flavour has its own).
CI_VARIABLES = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE")


def plain_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: ours) without the variables that make nixbuild think it is in CI."""
    return {k: v for k, v in (env or os.environ).items() if k not in CI_VARIABLES}


def require(tool: str) -> None:
    """Skip when `tool` is missing, except in CI where a missing tool is a failure."""
    if shutil.which(tool) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is required in CI but not on PATH (run .ci/bootstrap test)")
        pytest.skip(f"{tool} not installed")


@pytest.fixture(autouse=True)
def private_user_dirs(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every test gets its own state and config dirs: never the user's ledger, locks or
    config file, and no NIXBUILD_* settings leaking in from the environment."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))
    # The systemd user manager fixture owns XDG_CONFIG_HOME: it is that manager's unit path.
    if "user_manager" not in request.fixturenames:
        monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    for name in list(os.environ):
        if name.startswith("NIXBUILD_") and name != "NIXBUILD_VENV":
            monkeypatch.delenv(name)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root mounts it): a file system that fills up for real. Never left
    mounted; skipped only where mounting is not allowed, and never in CI."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs in CI: {done.stderr}")
        pytest.skip(f"cannot mount a tmpfs here (root needed): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        # Lazily if still busy (a descriptor a failing test leaked): never leave it mounted.
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill_up(directory: Path) -> None:
    """Write a file in ``directory`` until its file system is full."""
    with contextlib.suppress(OSError), (directory / "filler").open("wb", buffering=0) as out:
        while True:
            out.write(b"\0" * 4096)


@pytest.fixture(scope="session")
def nix_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nix")
    for sub in ("store", "state", "conf", "log", "home", "cache"):
        (root / sub).mkdir()
    (root / "conf" / "nix.conf").write_text(NIX_CONF)
    return root


@pytest.fixture
def nix_env(nix_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Point every nix invocation of this test (ours and the child's) at the isolated store."""
    require("nix")
    env = {
        "NIX_STORE_DIR": str(nix_root / "store"),
        "NIX_STATE_DIR": str(nix_root / "state"),
        "NIX_LOG_DIR": str(nix_root / "log"),
        "NIX_CONF_DIR": str(nix_root / "conf"),
        "NIX_REMOTE": "",
        "XDG_CACHE_HOME": str(nix_root / "cache"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("NIX_USER_CONF_FILES", raising=False)
    yield env


@pytest.fixture
def flake(tmp_path: Path) -> Path:
    """A private copy of the fixture flake (tests may edit it); refer to it as path:DIR.

    Its nonce is fresh, so its derivations really build in this test whatever other tests
    built in the shared store before (a test reading builder output must not depend on order).
    """
    dest = tmp_path / "flake"
    shutil.copytree(FIXTURE_FLAKE, dest)
    (dest / "nonce.txt").write_text(uuid.uuid4().hex)
    return dest
