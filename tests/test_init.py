"""`nixbuild init --template pytorch-cuda`: rendering, validation, safe writing, and the
generated flake evaluated by real Nix against the stand-in nixpkgs."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import require
from standin import SYSTEM, closure_names, drv_path, flake_show, make_project

from nixbuild import init
from nixbuild.cli_torch import init_command
from nixbuild.config import read_config_file
from nixbuild.errors import ExitCode, UsageError

PROJECT_FILES = {
    "flake.nix",
    "nix/development.nix",
    "nix/packages.nix",
    "nix/README.md",
    "nixbuild.toml",
}
SOURCE_TORCH = {"torch", "torchvision", "torchaudio"}
BIN_TORCH = {"torch-bin", "torchvision-bin", "torchaudio-bin"}


def python_packages(names: set[str], python: str = "python3.12") -> set[str]:
    """`python3.12-torch-stand-in` → `torch` for the stand-in's Python package derivations."""
    prefix, suffix = f"{python}-", "-stand-in"
    return {
        n[len(prefix) : -len(suffix)] for n in names if n.startswith(prefix) and n.endswith(suffix)
    }


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "attr"), [("3.11", "python311"), ("3.12", "python312"), ("3.13", "python313")]
)
def test_python_version_maps_to_nixpkgs_attribute(version: str, attr: str) -> None:
    assert init.python_attribute(version) == attr


@pytest.mark.parametrize("version", ["3.9", "2.7", "3", "3.12.1", "python312", "3.12;", ""])
def test_bad_python_version_is_a_usage_error(version: str) -> None:
    with pytest.raises(UsageError, match="unsupported Python version"):
        init.python_attribute(version)


def test_capabilities_are_flattened_and_deduplicated() -> None:
    assert init.parse_capabilities(["8.6,8.9", " 9.0a ", "8.6"]) == ("8.6", "8.9", "9.0a")


@pytest.mark.parametrize("value", ["86", "8.6.1", '8.6" ]; x = [ "', "sm_86", "${x}"])
def test_bad_capability_is_rejected(value: str) -> None:
    with pytest.raises(UsageError, match="invalid CUDA capability"):
        init.parse_capabilities([value])


@pytest.mark.parametrize(
    "name",
    ["", "a b", "x;", 'x"', "${builtins.abort}", "a..b", ".a", "1abc", "with", "x]", "x++y", "a'"],
)
def test_package_names_that_could_inject_nix_are_rejected(name: str) -> None:
    with pytest.raises(UsageError, match="invalid package name"):
        init.split_extra_packages([name])


def test_extra_packages_split_into_python_and_system() -> None:
    python, system = init.split_extra_packages(
        ["polars", "pkgs.ffmpeg", "paho-mqtt", "polars", "pkgs.xorg.libXt"]
    )
    assert python == ("polars", "paho-mqtt")
    assert system == ("ffmpeg", "xorg.libXt")


# --- rendering ------------------------------------------------------------------------------


def test_render_writes_every_file_with_no_placeholder_left() -> None:
    files = init.render(
        init.InitOptions(cuda_capabilities=("8.6", "8.9"), python_packages=("polars",))
    )
    assert set(files) == PROJECT_FILES
    for rel, text in files.items():
        assert re.search(r"@[A-Z_]+@", text) is None, rel
    flake = files["flake.nix"]
    assert "allowUnfree = true;" in flake
    assert "cudaSupport = true;" in flake
    assert 'cudaCapabilities = [ "8.6" "8.9" ];' in flake
    assert "pkgs.python312" in flake
    assert "flake.lock" not in files
    assert "ps.polars" in files["nix/packages.nix"]


def test_without_capabilities_the_setting_is_left_commented() -> None:
    flake = init.render(init.InitOptions())["flake.nix"]
    assert '# cudaCapabilities = [ "8.6" ];' in flake


def test_config_file_has_a_job_per_shell_with_the_bin_fallback() -> None:
    config = tomllib.loads(init.render(init.InitOptions())["nixbuild.toml"])
    assert config["jobs"]["torch"] == {
        "installable": ".#default",
        "mode": "develop",
        "fallback": ".#bin",
        "max_jobs": 1,
    }
    assert config["jobs"]["torch-bin"] == {
        "installable": ".#bin",
        "mode": "develop",
        "no_fallback": True,
    }


def test_config_file_is_accepted_by_the_config_loader(tmp_path: Path) -> None:
    path = tmp_path / "nixbuild.toml"
    path.write_text(init.render(init.InitOptions())["nixbuild.toml"])
    top, jobs = read_config_file(path)
    assert top == {}
    assert jobs["torch"]["fallback"] == ".#bin"
    assert jobs["torch-bin"]["no_fallback"] is True


def test_shell_hook_sets_the_cuda_variables() -> None:
    development = init.render(init.InitOptions())["nix/development.nix"]
    for variable in ("CUDA_PATH", "LD_LIBRARY_PATH", "EXTRA_LDFLAGS", "EXTRA_CCFLAGS"):
        assert f"export {variable}=" in development


# --- writing --------------------------------------------------------------------------------


def test_existing_files_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    (tmp_path / "nix").mkdir()
    (tmp_path / "nix" / "packages.nix").write_text("mine\n")
    with pytest.raises(init.ProjectExists) as caught:
        init.write_project(tmp_path, init.render(init.InitOptions()), force=False)
    assert caught.value.exit_code == ExitCode.USAGE
    assert "nix/packages.nix" in str(caught.value)
    assert (tmp_path / "nix" / "packages.nix").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["packages.nix"]


def test_force_replaces_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    (tmp_path / "flake.nix").write_text("old\n")
    written = init.write_project(tmp_path, init.render(init.InitOptions()), force=True)
    assert {p.relative_to(tmp_path).as_posix() for p in written} == PROJECT_FILES
    assert "allowUnfree" in (tmp_path / "flake.nix").read_text()
    assert {
        p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()
    } == PROJECT_FILES


def test_cli_refuses_with_exit_2_naming_the_files(tmp_path: Path) -> None:
    (tmp_path / "flake.nix").write_text("old\n")
    (tmp_path / "nixbuild.toml").write_text("old\n")
    result = CliRunner().invoke(init_command, [str(tmp_path)])
    assert result.exit_code == 2
    assert "flake.nix" in result.output
    assert "nixbuild.toml" in result.output
    assert "--force" in result.output
    assert not (tmp_path / "nix").exists()


def test_cli_writes_the_project_and_says_flake_lock_is_left_to_nix(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        init_command,
        [
            str(tmp_path / "p"),
            "--python",
            "3.11",
            "--cuda-capabilities",
            "8.6,8.9",
            "--extra-package",
            "polars",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "nix flake lock" in result.output
    assert not (tmp_path / "p" / "flake.lock").exists()
    assert "pkgs.python311" in (tmp_path / "p" / "flake.nix").read_text()


def test_cli_reminds_to_git_add_inside_a_repository(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    result = CliRunner().invoke(init_command, [str(tmp_path / "sub")])
    assert result.exit_code == 0, result.output
    assert "git add" in result.output


def test_cli_bad_option_is_exit_2_without_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(init_command, [str(tmp_path), "--extra-package", 'x"; y'])
    assert result.exit_code == 2
    assert "invalid package name" in result.output
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


# --- real Nix against the stand-in nixpkgs --------------------------------------------------


@pytest.mark.nix
def test_generated_nix_files_parse(nix_env: dict[str, str], tmp_path: Path) -> None:
    require("nix-instantiate")
    init.write_project(
        tmp_path, init.render(init.InitOptions(python_packages=("polars",))), force=False
    )
    for rel in sorted(PROJECT_FILES):
        if rel.endswith(".nix"):
            parsed = nix_parse(tmp_path / rel)
            assert parsed.returncode == 0, f"{rel}: {parsed.stderr}"


def nix_parse(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nix-instantiate", "--parse", str(path)], capture_output=True, text=True, check=False
    )


@pytest.mark.nix
def test_flake_lists_both_shells_and_the_closures_hold_one_torch_variant(
    nix_env: dict[str, str], tmp_path: Path
) -> None:
    # torchmetrics depends on `torch` through the package set: the bin shell proves the
    # overlay only if torchmetrics is built against torch-bin there.
    project = make_project(
        tmp_path,
        options=init.InitOptions(
            cuda_capabilities=("8.6", "8.9"), python_packages=("torchmetrics",)
        ),
    )
    shells = flake_show(project)["devShells"]
    assert isinstance(shells, dict)
    assert set(shells[SYSTEM]) == {"default", "bin"}

    source = closure_names(drv_path(project, f"devShells.{SYSTEM}.default"), project)
    source_python = python_packages(source)
    assert SOURCE_TORCH | {"torchmetrics", "pandas", "jupyterlab", "paho-mqtt"} <= source_python
    assert not source_python & BIN_TORCH
    assert {
        "cudatoolkit-stand-in",
        "nvidia-x11-stand-in",
        "mosquitto-stand-in",
        "ncurses5-stand-in",
    } <= source

    binary = closure_names(drv_path(project, f"devShells.{SYSTEM}.bin"), project)
    bin_python = python_packages(binary)
    assert BIN_TORCH | {"torchmetrics", "pandas"} <= bin_python
    assert not bin_python & SOURCE_TORCH, "a source torch leaked into the bin shell"

    # The capabilities reach the source build (the stand-in's torch records them as nixpkgs does).
    (torch_drv,) = [
        d
        for d in drv_files(drv_path(project, f"devShells.{SYSTEM}.default"), project)
        if d.name.endswith("-python3.12-torch-stand-in.drv")
    ]
    assert '"TORCH_CUDA_ARCH_LIST","8.6;8.9"' in torch_drv.read_text()


@pytest.mark.nix
def test_without_the_overlay_a_dependent_pulls_source_torch_into_the_bin_shell(
    nix_env: dict[str, str], tmp_path: Path
) -> None:
    """Control for the closure test: it does detect two torches when the overlay is gone."""
    project = make_project(tmp_path, options=init.InitOptions(python_packages=("torchmetrics",)))
    packages = project / "nix" / "packages.nix"
    text = packages.read_text()
    # The naive way: no overlay, the -bin packages listed next to everything else.
    naive = re.sub(r"python\.override \{.*?\n  \};", "python;", text, flags=re.DOTALL)
    naive = naive.replace(
        "    torch\n    torchvision\n    torchaudio\n",
        "    torch-bin\n    torchvision-bin\n    torchaudio-bin\n",
    )
    assert "packageOverrides" not in naive
    assert "torchaudio-bin\n" in naive
    packages.write_text(naive)
    bin_python = python_packages(
        closure_names(drv_path(project, f"devShells.{SYSTEM}.bin"), project)
    )
    assert {"torch", "torch-bin"} <= bin_python


def drv_files(drv: str, cwd: Path) -> list[Path]:
    result = subprocess.run(
        ["nix-store", "-qR", drv], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [Path(p) for p in result.stdout.split() if p.endswith(".drv")]
