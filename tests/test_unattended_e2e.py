"""Unattended-run features end to end with real Nix: the demo, notification hooks, the stall
detector and retention of old run directories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import plain_env
from test_build_e2e import nixbuild

pytestmark = pytest.mark.nix


def summaries(log_dir: Path) -> list[dict[str, Any]]:
    found = sorted(log_dir.glob("*/summary.json"))
    return [json.loads(p.read_text()) for p in found]


def test_demo_shows_the_ladder_and_the_fallback(nix_env: dict[str, str], tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    result = nixbuild("demo", "--log-dir", str(logs), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    (summary,) = summaries(logs)
    assert summary["status"] == "fallback" and summary["variant"] == "bin"
    shape = [
        (
            a["cores"],
            a["diagnosis"] and a["diagnosis"]["kind"],
            a["decision"] and a["decision"]["action"],
        )
        for a in summary["attempts"]
    ]
    # a real MemoryError above 2 cores, a link error below, then the prebuilt variant
    assert shape == [
        (8, "oom", "degrade"),
        (4, "oom", "degrade"),
        (2, "build", "degrade"),
        (1, "build", "fallback"),
        (1, None, None),
    ]
    assert "fall back to path:" in result.stderr and "#demo-app-bin" in result.stderr
    assert result.stdout.strip().endswith("-demo-app-bin-1.0")


def test_hooks_get_the_outcome(nix_env: dict[str, str], flake: Path, tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    hook = f'echo "$NIXBUILD_STATUS $NIXBUILD_EXIT_CODE $NIXBUILD_SUMMARY" >> {seen}'
    for attr in ("ok", "fail"):
        nixbuild(
            "build",
            f"path:{flake}#{attr}",
            "--log-dir",
            str(tmp_path / "logs"),
            "--max-attempts",
            "1",
            "--on-success",
            f"{hook}; echo success-hook >> {seen}",
            "--on-failure",
            f"{hook}; echo failure-hook >> {seen}",
            cwd=tmp_path,
        )
    lines = seen.read_text().splitlines()
    assert lines[0].startswith("success 0 ") and lines[1] == "success-hook"
    assert lines[2].startswith("failed 1 ") and lines[3] == "failure-hook"
    assert Path(lines[0].split()[2]).is_file()  # NIXBUILD_SUMMARY points at summary.json


def test_failing_hook_is_reported_not_fatal(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    result = nixbuild(
        "build",
        f"path:{flake}#ok",
        "--log-dir",
        str(tmp_path / "logs"),
        "--on-success",
        "echo mail server down >&2; exit 7",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "warning: on-success hook exited 7: mail server down" in result.stderr


def test_stall_detector_stops_a_silent_attempt(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    (flake / "sleep.txt").write_text("307")
    result = nixbuild(
        "build",
        f"path:{flake}#slow",
        "--log-dir",
        str(tmp_path / "logs"),
        "--stall-timeout",
        "3s",
        "--max-attempts",
        "1",
        cwd=tmp_path,
    )
    assert result.returncode == 75, result.stderr
    (summary,) = summaries(tmp_path / "logs")
    diagnosis = summary["attempts"][0]["diagnosis"]
    assert diagnosis["kind"] == "timeout" and diagnosis["rule"] == "timeout.stall"
    assert "stall detector: no output for" in result.stderr
    left = subprocess.run(["pgrep", "-f", "/bin/sleep 307"], capture_output=True, check=False)
    assert left.stdout == b""


def test_old_run_directories_are_pruned(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    (logs / "notes").mkdir(parents=True)  # not a run directory: never touched
    env = dict(plain_env(), NIXBUILD_KEEP_RUNS="2")
    for _ in range(4):
        done = subprocess.run(
            [sys.executable, "-m", "nixbuild", "build", f"path:{flake}#ok", "--log-dir", str(logs)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    runs = [p.name for p in logs.iterdir() if p.name != "notes"]
    assert len(runs) == 2 and (logs / "notes").is_dir()
    assert (logs / max(runs)).is_dir()  # the newest run survived
