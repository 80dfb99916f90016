"""Generated pytorch-cuda projects wired to the stand-in nixpkgs (tests/fixtures/stand-in-nixpkgs).

Real nixpkgs cannot be fetched in the tests, so each project's `nixpkgs` input is locked to a
private copy of the stand-in (`nix flake lock --override-input`, no network for path: inputs).
The copy may get a `host-python` file: the stand-in's interpreter then runs that host Python
(test-only; the sandbox is off, so a store path may point outside the store).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from conftest import FIXTURES

from nixbuild import init

STAND_IN = FIXTURES / "stand-in-nixpkgs"
SYSTEM = "x86_64-linux"
NIX = ["nix", "--extra-experimental-features", "nix-command flakes"]


def nix(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NIX, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def stand_in_copy(tmp_path: Path, host_python: str | None = None) -> Path:
    dest = tmp_path / "stand-in-nixpkgs"
    shutil.copytree(STAND_IN, dest)
    if host_python is not None:
        (dest / "host-python").write_text(host_python + "\n")
    return dest


def make_project(
    tmp_path: Path,
    *,
    host_python: str | None = None,
    options: init.InitOptions | None = None,
) -> Path:
    """`nixbuild init` into tmp_path/project, its nixpkgs locked to a stand-in copy."""
    project = tmp_path / "project"
    init.write_project(project, init.render(options or init.InitOptions()), force=False)
    stand_in = stand_in_copy(tmp_path, host_python)
    locked = nix(
        "flake",
        "lock",
        f"path:{project}",
        "--override-input",
        "nixpkgs",
        f"path:{stand_in}",
        cwd=tmp_path,
    )
    assert locked.returncode == 0, locked.stderr
    return project


def drv_path(project: Path, attr: str) -> str:
    result = nix("eval", "--raw", f"path:{project}#{attr}.drvPath", cwd=project)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def closure_names(drv: str, cwd: Path) -> set[str]:
    """Names (store path minus hash, minus .drv) of everything in a derivation's closure."""
    result = subprocess.run(
        ["nix-store", "-qR", drv], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    names = set()
    for line in result.stdout.split():
        base = Path(line).name.split("-", 1)[1]
        names.add(base.removesuffix(".drv"))
    return names


def flake_show(project: Path) -> dict[str, object]:
    result = nix("flake", "show", "--json", f"path:{project}", cwd=project)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data
