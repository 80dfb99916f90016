"""`nixbuild verify` and `nixbuild bench`: pure diagnosis and statistics, then real runs
inside a generated project's dev shells whose Python has a real CPU build of torch.

The torch comes from `pip install torch==2.13.0` into a dedicated virtualenv, made once and
reused across runs ($NIXBUILD_VENV/torch-cpu, default .venv/torch-cpu, or
$NIXBUILD_TORCH_VENV). The stand-in nixpkgs points its interpreter at that virtualenv's
python (test-only; see tests/standin.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from standin import make_project

from nixbuild import torchbench, torchcheck
from nixbuild.cli_torch import bench_command, verify_command
from nixbuild.errors import NixbuildError, UsageError

REPO = Path(__file__).resolve().parents[1]
TORCH_REQUIREMENT = "torch==2.13.0"
# Beside the test venv (.ci/bootstrap's NIXBUILD_VENV), unless NIXBUILD_TORCH_VENV says where.
TORCH_VENV = Path(
    os.environ.get("NIXBUILD_TORCH_VENV")
    or REPO / os.environ.get("NIXBUILD_VENV", ".venv") / "torch-cpu"
)


# --- pure: facts → verdict → text --------------------------------------------------------

FACTS_CPU: dict[str, Any] = {
    "python": "3.12.8",
    "executable": "/nix/store/x-python3-3.12.8-env/bin/python3.12",
    "torch_version": "2.5.1",
    "torch_cuda": None,
    "torch_file": "/nix/store/x/torch/__init__.py",
    "torch_error": None,
    "cuda_available": False,
    "device_count": 0,
    "devices": [],
    "cuda_error": None,
    "cuda_visible_devices": None,
    "torch_locations": ["/nix/store/x/torch"],
    "torch_distributions": ["torch 2.5.1"],
    "ld_library_path": ["/run/opengl-driver/lib"],
    "driver_in_ld_library_path": [],
    "driver_path": None,
    "driver_error": "libcuda.so.1: cannot open shared object file: No such file or directory",
}
FACTS_GPU = FACTS_CPU | {
    "torch_cuda": "12.4",
    "cuda_available": True,
    "device_count": 1,
    "devices": ["NVIDIA GeForce RTX 4090"],
    "driver_path": "/run/opengl-driver/lib/libcuda.so.1",
    "driver_error": None,
}


def cause_ids(verdict: torchcheck.Verdict) -> set[str]:
    return {c.id for c in verdict.causes}


def test_gpu_shell_is_the_success_block() -> None:
    verdict = torchcheck.judge(".#default", torchcheck.parse_facts(FACTS_GPU), expect_cuda=True)
    assert verdict.ok
    assert verdict.causes == ()
    assert torchcheck.render_human(verdict).splitlines() == [
        "✅ PyTorch 2.5.1  (python 3.12.8)",
        "✅ CUDA 12.4: available, 1 device(s)",
        "✅ GPU 0: NVIDIA GeForce RTX 4090",
    ]


def test_cpu_only_torch_without_driver_names_both_causes() -> None:
    verdict = torchcheck.judge(".#default", torchcheck.parse_facts(FACTS_CPU), expect_cuda=True)
    assert not verdict.ok
    assert cause_ids(verdict) == {"cpu-only-torch", "driver-library-missing"}
    text = torchcheck.render_human(verdict)
    assert "✗ cause: CPU-only torch" in text
    assert "✗ cause: driver library libcuda.so not found" in text
    assert "✓ ruled out: two torch builds mixed" in text


def test_unavailable_cuda_is_fine_when_not_expected() -> None:
    verdict = torchcheck.judge(".#bin", torchcheck.parse_facts(FACTS_CPU), expect_cuda=False)
    assert verdict.ok


def test_two_torch_builds_are_detected() -> None:
    facts = FACTS_CPU | {
        "torch_cuda": "12.4",
        "driver_path": "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "torch_locations": ["/nix/store/a/torch", "/nix/store/b/torch"],
    }
    verdict = torchcheck.judge(".#bin", torchcheck.parse_facts(facts), expect_cuda=True)
    assert cause_ids(verdict) == {"mixed-torch"}


def test_two_torch_builds_are_a_warning_when_cuda_works() -> None:
    facts = FACTS_GPU | {"torch_locations": ["/nix/store/a/torch", "/nix/store/b/torch"]}
    verdict = torchcheck.judge(".#bin", torchcheck.parse_facts(facts), expect_cuda=True)
    assert verdict.ok
    assert cause_ids(verdict) == {"mixed-torch"}
    assert "⚠ warning: two torch builds mixed" in torchcheck.render_human(verdict)


def test_malformed_facts_are_an_error_not_a_traceback() -> None:
    with pytest.raises(NixbuildError, match="malformed facts"):
        torchcheck.parse_facts(FACTS_GPU | {"device_count": "many"})


def test_hidden_devices_and_failed_init_are_told_apart() -> None:
    base = FACTS_GPU | {"cuda_available": False, "device_count": 0, "devices": []}
    hidden = torchcheck.judge(
        "s", torchcheck.parse_facts(base | {"cuda_visible_devices": ""}), expect_cuda=True
    )
    assert cause_ids(hidden) == {"devices-hidden"}
    failed = torchcheck.judge(
        "s",
        torchcheck.parse_facts(base | {"cuda_error": "RuntimeError: no CUDA GPUs"}),
        expect_cuda=True,
    )
    assert cause_ids(failed) == {"cuda-init-failed"}
    assert "no CUDA GPUs" in failed.causes[0].detail


def test_missing_torch_is_a_failure_even_without_cuda() -> None:
    facts = FACTS_CPU | {
        "torch_version": None,
        "torch_error": "ModuleNotFoundError: No module named 'torch'",
    }
    verdict = torchcheck.judge("s", torchcheck.parse_facts(facts), expect_cuda=False)
    assert not verdict.ok
    assert cause_ids(verdict) == {"torch-missing"}
    assert "torch is not importable" in torchcheck.render_human(verdict)


def test_json_shape_is_stable() -> None:
    verdict = torchcheck.judge(".#default", torchcheck.parse_facts(FACTS_CPU), expect_cuda=True)
    data = torchcheck.verdict_json(verdict)
    assert list(data) == [
        "schema", "installable", "ok", "expect_cuda", "python", "torch_version", "torch_cuda",
        "cuda_available", "device_count", "devices", "driver_library", "torch_locations",
        "causes", "checks",
    ]  # fmt: skip
    assert data["schema"] == 1
    assert [c["id"] for c in data["causes"]] == ["cpu-only-torch", "driver-library-missing"]


def test_marked_json_is_found_among_shell_hook_output() -> None:
    stdout = 'PyTorch 2.5.1 | CUDA 12.4\nMARK {"a": 1}\nMARK {"a": 2}\ntrailing\n'
    assert torchcheck.extract_marked_json(stdout, "MARK ") == {"a": 2}
    assert torchcheck.extract_marked_json("MARK {bad", "MARK ") is None
    assert torchcheck.extract_marked_json("nothing", "MARK ") is None


def run_of(label: str, times: dict[int, list[float]]) -> torchbench.BenchRun:
    results = [{"size": n, "times_s": t} for n, t in times.items()]
    raw: dict[str, Any] = {"device": "cuda", "torch_version": "2.5.1", "torch_cuda": "12.4"}
    raw |= {"gpu": "GPU", "error": None, "results": results}
    return torchbench.parse_run(label, f".#{label}", raw)


def test_bench_comparison_is_bin_time_over_source_time() -> None:
    source = run_of("source", {1000: [0.010, 0.010], 3000: [0.100, 0.100]})
    binary = run_of("bin", {1000: [0.011, 0.011], 3000: [0.121, 0.121]})
    gains = [c.source_gain for c in torchbench.compare(source, binary)]
    assert gains == pytest.approx([0.10, 0.21])
    overall = torchbench.overall_gain(torchbench.compare(source, binary))
    assert overall == pytest.approx((1.1 * 1.21) ** 0.5 - 1)
    assert torchbench.describe_gain(overall) == "source is 15.4% faster"
    assert torchbench.describe_gain(-0.05) == "source is 5.0% slower"
    table = torchbench.render_table(source, binary, 2)
    assert "overall: source is 15.4% faster" in table
    assert "source is 21.0% faster" in table


def test_bench_input_and_result_errors() -> None:
    assert torchbench.parse_sizes("64, 128") == (64, 128)
    for bad in ("", "a", "0", "64,-1"):
        with pytest.raises(UsageError):
            torchbench.parse_sizes(bad)
    with pytest.raises(NixbuildError, match="CUDA is not available"):
        torchbench.parse_run("bin", ".#bin", {"error": "CUDA is not available in this shell"})
    with pytest.raises(NixbuildError, match="malformed"):
        torchbench.parse_run("bin", ".#bin", {"results": [{"size": "x"}]})


# --- real: a CPU torch inside the generated project's shells -------------------------------


def _torch_version(python: Path) -> str | None:
    if not python.exists():
        return None
    done = subprocess.run(
        [str(python), "-c", "import torch; print(torch.__version__)"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 else None


@pytest.fixture(scope="session")
def torch_python() -> Path:
    """A python with a real CPU torch 2.13.0, installed once into a dedicated virtualenv."""
    python = TORCH_VENV / "bin" / "python"
    version = _torch_version(python)
    if version is not None and version.startswith("2.13.0"):
        return python
    staging = TORCH_VENV.with_name(TORCH_VENV.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    made = subprocess.run(
        [sys.executable, "-m", "venv", str(staging)], capture_output=True, text=True, check=False
    )
    installed = made.returncode == 0 and (
        subprocess.run(
            [str(staging / "bin" / "python"), "-m", "pip", "install", "-q",
             "--disable-pip-version-check", TORCH_REQUIREMENT],
            capture_output=True, text=True, check=False, timeout=1800,
        ).returncode == 0
    )  # fmt: skip
    if not installed:
        message = (
            f"cannot install {TORCH_REQUIREMENT} into {staging} (needed for verify/bench tests)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    shutil.rmtree(TORCH_VENV, ignore_errors=True)
    staging.rename(TORCH_VENV)  # all or nothing: a half-installed venv is never reused
    assert (_torch_version(python) or "").startswith("2.13.0")
    return python


@pytest.fixture
def torch_project(nix_env: dict[str, str], torch_python: Path, tmp_path: Path) -> Path:
    return make_project(tmp_path, host_python=str(torch_python))


def invoke(command: Any, args: list[str]) -> Any:
    return CliRunner().invoke(command, args, catch_exceptions=False)


@pytest.mark.nix
def test_verify_cpu_torch_without_expecting_cuda(torch_project: Path) -> None:
    result = invoke(verify_command, [f"path:{torch_project}#default", "--no-expect-cuda"])
    assert result.exit_code == 0, result.output
    assert "✅ PyTorch 2.13.0" in result.stdout
    assert "not available (not expected" in result.stdout


@pytest.mark.nix
def test_verify_expecting_cuda_checks_and_names_the_causes(torch_project: Path) -> None:
    result = invoke(verify_command, [f"path:{torch_project}#bin", "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert data["torch_version"].startswith("2.13.0")
    assert data["torch_cuda"] is None
    assert {c["id"] for c in data["causes"]} == {"cpu-only-torch", "driver-library-missing"}
    assert {c["id"]: c["applies"] for c in data["checks"]}["mixed-torch"] is False
    # The shell's LD_LIBRARY_PATH (from the template's shellHook) is what was searched.
    (driver,) = [c for c in data["causes"] if c["id"] == "driver-library-missing"]
    assert "/run/opengl-driver/lib" in driver["message"]
    assert "nvidia-x11" in driver["message"]

    human = invoke(verify_command, [f"path:{torch_project}#bin"])
    assert human.exit_code == 1
    assert "✗ cause: CPU-only torch" in human.stdout
    assert "✗ cause: driver library libcuda.so not found" in human.stdout


@pytest.mark.nix
def test_verify_without_torch_says_so(nix_env: dict[str, str], tmp_path: Path) -> None:
    # The test runner's own python has no torch.
    project = make_project(tmp_path, host_python=sys.executable)
    result = invoke(verify_command, [f"path:{project}#default", "--no-expect-cuda"])
    assert result.exit_code == 1
    assert "torch is not importable" in result.stdout
    assert "No module named 'torch'" in result.stdout


@pytest.mark.nix
def test_verify_of_a_shell_that_does_not_exist_is_a_clear_error(
    nix_env: dict[str, str], tmp_path: Path
) -> None:
    project = make_project(tmp_path)
    result = invoke(verify_command, [f"path:{project}#nope"])
    assert result.exit_code == 1
    assert "could not run the check in the shell" in result.output
    assert "Traceback" not in result.output


@pytest.mark.nix
def test_bench_runs_in_both_shells(torch_project: Path) -> None:
    args = ["--source", f"path:{torch_project}#default", "--bin", f"path:{torch_project}#bin",
            "--device", "cpu", "--sizes", "64,128", "--iterations", "2"]  # fmt: skip
    result = invoke(bench_command, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for label in ("source", "bin"):
        run = data[label]
        assert run["device"] == "cpu"
        assert run["torch_version"].startswith("2.13.0")
        assert [r["size"] for r in run["results"]] == [64, 128]
        assert all(len(r["times_s"]) == 2 and min(r["times_s"]) > 0 for r in run["results"])
    assert [c["size"] for c in data["comparison"]] == [64, 128]


def test_probe_sees_a_second_torch_distribution(torch_python: Path, tmp_path: Path) -> None:
    """The probe script itself (no shell): a stale torch install's metadata on sys.path."""
    stale = tmp_path / "stale" / "torch-2.5.1.dist-info"
    stale.mkdir(parents=True)
    (stale / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.5.1\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "stale")}
    done = subprocess.run(
        [str(torch_python), "-c", torchcheck.PROBE_SCRIPT],
        env=env, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    raw = torchcheck.extract_marked_json(done.stdout, torchcheck.PROBE_MARK)
    assert raw is not None, done.stderr
    facts = torchcheck.parse_facts(raw)
    assert len(facts.torch_distributions) == 2
    assert facts.torch_version is not None and facts.torch_version.startswith("2.13.0")
    checks = {c.id: c.applies for c in torchcheck.check_causes(facts)}
    assert checks["mixed-torch"] is True
