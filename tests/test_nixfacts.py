"""`nix --version`, remembered per executable: real nix, a real cache file.

The e2e test at the end counts nix starts through a PATH shim that logs each call and
then execs the real nix.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from conftest import plain_env, require
from test_build_e2e import nixbuild

from nixbuild import process
from nixbuild.errors import NixMissingError
from nixbuild.nixcmd import NixInfo, version_tuple
from nixbuild.nixfacts import CACHE_FILENAME, executable_key, nix_version, parse_nix_version


class CountingRunner:
    """The real process layer, counting what it is asked to start."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> process.Completed:
        self.calls.append(argv)
        return process.run_capture(argv, timeout=30)


def use_path_with(monkeypatch: pytest.MonkeyPatch, bindir: Path) -> None:
    """Put ``bindir`` first on PATH: how nixbuild and the process layer find `nix`."""
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")


def copy_of_nix(tmp_path: Path, name: str) -> Path:
    """A directory holding a private copy of the real nix executable (its own inode)."""
    real = shutil.which("nix")
    assert real is not None
    bindir = tmp_path / name
    bindir.mkdir()
    shutil.copy2(os.path.realpath(real), bindir / "nix")
    return bindir


def test_parse_nix_version() -> None:
    assert parse_nix_version("nix (Nix) 2.8.0\n") == "2.8.0"
    assert parse_nix_version("nix (Nix) 2.24.10pre\n") == "2.24.10pre"
    assert parse_nix_version("garbage") is None
    assert parse_nix_version("") is None


def test_nix_info_compares_numbers_and_keeps_the_printed_version() -> None:
    info = NixInfo.from_version("2.24.10pre")
    assert info.version == (2, 24, 10)
    assert info.label == "2.24.10pre"
    assert version_tuple("nix (Determinate Nix 3.6.2) 2.29.0") == (2, 29, 0)
    assert version_tuple("2.3") == (2, 3, 0)
    with pytest.raises(NixMissingError):
        version_tuple("garbage")


def test_the_version_is_read_once_per_executable(tmp_path: Path) -> None:
    require("nix")
    cache = tmp_path / "state" / CACHE_FILENAME
    runner = CountingRunner()
    first = nix_version(runner, os.environ, cache)
    assert first is not None and first[0].isdigit()
    assert json.loads(cache.read_text()) == {executable_key(os.environ): first}
    assert nix_version(runner, os.environ, cache) == first
    assert len(runner.calls) == 1  # the second answer came from the file


def test_another_executable_is_asked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An upgrade replaces the file or the store path behind PATH's nix: a new key.
    require("nix")
    cache = tmp_path / CACHE_FILENAME
    runner = CountingRunner()
    version = nix_version(runner, os.environ, cache)
    old_key = executable_key(os.environ)
    use_path_with(monkeypatch, copy_of_nix(tmp_path, "new"))
    assert executable_key(os.environ) != old_key
    assert nix_version(runner, os.environ, cache) == version
    assert len(runner.calls) == 2
    assert nix_version(runner, os.environ, cache) == version
    assert len(runner.calls) == 2
    # The same path rewritten in place (a package upgrade) is a new identity too.
    os.utime(tmp_path / "new" / "nix", ns=(1, 1))
    assert nix_version(runner, os.environ, cache) == version
    assert len(runner.calls) == 3


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"x": 1}', ""])
def test_a_damaged_cache_is_ignored_and_replaced(tmp_path: Path, content: str) -> None:
    require("nix")
    cache = tmp_path / CACHE_FILENAME
    cache.write_text(content)
    runner = CountingRunner()
    version = nix_version(runner, os.environ, cache)
    assert version is not None and len(runner.calls) == 1
    assert json.loads(cache.read_text()) == {executable_key(os.environ): version}


@pytest.mark.parametrize("garbage", ["not a version", "garbage 1", "nix (Nix) 2.8.0", 2.8])
def test_a_remembered_garbage_answer_is_not_trusted(tmp_path: Path, garbage: object) -> None:
    # Only what nix_version writes, a bare version, is reused.
    require("nix")
    cache = tmp_path / CACHE_FILENAME
    cache.write_text(json.dumps({executable_key(os.environ): garbage}))
    runner = CountingRunner()
    version = nix_version(runner, os.environ, cache)
    assert version is not None and version == parse_nix_version(version)
    assert len(runner.calls) == 1


def test_an_unwritable_cache_changes_nothing(tmp_path: Path) -> None:
    require("nix")
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a file where the cache's directory should be
    runner = CountingRunner()
    assert nix_version(runner, os.environ, blocker / CACHE_FILENAME) is not None
    assert nix_version(runner, os.environ, blocker / CACHE_FILENAME) is not None
    assert len(runner.calls) == 2  # asked each time, no error
    assert list(tmp_path.iterdir()) == [blocker]  # no temporary file left behind


def test_a_cache_that_cannot_be_replaced_leaves_no_temporary_file(tmp_path: Path) -> None:
    require("nix")
    cache = tmp_path / CACHE_FILENAME
    cache.mkdir()  # a directory where the file should be: the final rename fails
    runner = CountingRunner()
    assert nix_version(runner, os.environ, cache) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == [CACHE_FILENAME]


def test_missing_nix_is_none_and_nothing_is_cached(tmp_path: Path) -> None:
    cache = tmp_path / CACHE_FILENAME
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}

    def no_nix(argv: list[str]) -> process.Completed:
        raise process.CommandNotFound(argv[0])

    assert executable_key(env) is None
    assert nix_version(no_nix, env, cache) is None
    assert not cache.exists()


def test_a_failing_nix_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake, because a real nix that fails `--version` cannot be produced here.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "nix"
    fake.write_text("#!/bin/sh\necho 'error: broken' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    use_path_with(monkeypatch, bindir)
    cache = tmp_path / CACHE_FILENAME
    runner = CountingRunner()
    assert nix_version(runner, os.environ, cache) is None
    assert len(runner.calls) == 1
    assert not cache.exists()


def build(flake: Path, tmp_path: Path, env: dict[str, str]) -> str:
    """One real `nixbuild build`; the nix version its run recorded (events.jsonl)."""
    logs = tmp_path / "logs"
    before = set(logs.iterdir()) if logs.exists() else set()
    done = nixbuild(
        "build", f"path:{flake}#ok", "--quiet", "--log-dir", str(logs), cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr
    (run_dir,) = (p for p in set(logs.iterdir()) - before if p.is_dir())  # run ids may tie
    first = json.loads((run_dir / "events.jsonl").read_text().splitlines()[0])
    assert first["event"] == "run_started"
    return str(first["nix_version"])


@pytest.mark.nix
def test_a_build_uses_the_remembered_version(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    env = plain_env()
    real = build(flake, tmp_path, env)
    cache = Path(os.environ["XDG_STATE_HOME"]) / "nixbuild" / CACHE_FILENAME
    assert json.loads(cache.read_text()) == {executable_key(env): real}
    # Plant another (compatible) answer for the same executable: a build that asked nix
    # would record the real version, one that used the cache records this one, exactly as
    # nix would print it (a pre-release suffix included).
    major, minor, _ = real.split(".", 2)
    planted = f"{major}.{minor}.99pre"
    cache.write_text(json.dumps({executable_key(env): planted}))
    assert build(flake, tmp_path, env) == planted


@pytest.mark.nix
def test_a_wrapper_script_is_asked_every_time(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    # A wrapper stays the same file while the nix it runs changes: never remembered.
    real = shutil.which("nix")
    assert real is not None
    bindir = tmp_path / "shim"
    bindir.mkdir()
    calls = tmp_path / "calls.txt"
    shim = bindir / "nix"
    shim.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {real} "$@"\n')
    shim.chmod(0o755)
    env = plain_env({**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"})
    assert executable_key(env) is None
    for _ in range(2):
        build(flake, tmp_path, env)
    asked = calls.read_text().splitlines()
    assert sum(line == "--version" for line in asked) == 2
