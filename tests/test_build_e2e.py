"""`nixbuild build` / `develop` end to end: the real CLI, real Nix, an isolated store."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import fill_up, plain_env

pytestmark = pytest.mark.nix


# Output checked here is the terminal/plain flavour (plain_env); the CI renderer is tested
# in test_ci_e2e.py.


def nixbuild(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nixbuild", *args],
        cwd=cwd,
        env=plain_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def only_run_dir(log_dir: Path) -> Path:
    (run_dir,) = [p for p in log_dir.iterdir() if p.is_dir()]
    return run_dir


def summary_of(log_dir: Path) -> dict[str, Any]:
    data = json.loads((only_run_dir(log_dir) / "summary.json").read_text())
    assert isinstance(data, dict)
    return data


def test_build_success_records_everything(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    result = nixbuild(
        "build", f"path:{flake}#ok", "--log-dir", str(logs), "--cores", "2", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    out_path = result.stdout.strip()
    assert out_path.startswith(nix_env["NIX_STORE_DIR"]) and out_path.endswith("-fixture-app-1.0")
    assert (tmp_path / "result").resolve() == Path(out_path)  # the GC root, printed
    assert f"GC root {tmp_path / 'result'} -> {out_path}" in result.stderr
    assert "fixture-lib> compiling lib with 2 cores" in result.stderr

    run_dir = only_run_dir(logs)
    command = (run_dir / "command.txt").read_text()
    assert "--option cores 2 --option max-jobs 1 --log-format internal-json -v" in command
    assert "--extra-experimental-features 'nix-command flakes'" in command
    log = (run_dir / "attempt-1.log").read_text().splitlines()
    assert "fixture-app> Running phase: buildPhase" in log
    assert not any(line.startswith("@nix") for line in log)  # human-readable, not raw JSON
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "run_started"
    assert events[-1]["event"] == "run_finished"
    summary = summary_of(logs)
    assert summary["status"] == "success" and summary["exit_code"] == 0
    assert summary["outputs"] == [out_path]
    (attempt,) = summary["attempts"]
    assert attempt["diagnosis"] is None and attempt["cores"] == 2 and attempt["max_jobs"] == 1
    assert attempt["log"] == "attempt-1.log"


def test_extra_nix_args_pass_through(nix_env: dict[str, str], flake: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    result = nixbuild(
        "build",
        f"path:{flake}#ok",
        "--log-dir",
        str(logs),
        "--",
        "--show-trace",
        "--option",
        "max-silent-time",
        "600",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    command = (only_run_dir(logs) / "command.txt").read_text()
    assert command.rstrip().endswith(
        "--show-trace --option max-silent-time 600 --log-format internal-json -v"
    )


def test_build_failure_is_diagnosed(nix_env: dict[str, str], flake: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    result = nixbuild(
        "build",
        f"path:{flake}#fail",
        "--log-dir",
        str(logs),
        "--max-attempts",
        "1",
        "--no-fallback",
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    assert "diagnosis: build" in result.stderr
    summary = summary_of(logs)
    assert summary["status"] == "failed" and summary["exit_code"] == 1
    (attempt,) = summary["attempts"]
    assert attempt["diagnosis"]["kind"] == "build"
    assert attempt["diagnosis"]["drv"].endswith("fixture-fail-1.0.drv")
    assert attempt["decision"]["action"] == "give_up"
    # Evidence line numbers point into the attempt log.
    log = (only_run_dir(logs) / "attempt-1.log").read_text().splitlines()
    for ev in attempt["diagnosis"]["evidence"]:
        assert log[ev["line"] - 1] == ev["text"] or ev["text"] in log[ev["line"] - 1]


def test_develop_pins_profile_and_runs_command(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    logs, profile = tmp_path / "logs", tmp_path / "profiles" / "ok"
    result = nixbuild(
        "develop",
        f"path:{flake}#ok",
        "--log-dir",
        str(logs),
        "--out-link",
        str(profile),
        "--command",
        "echo inside the shell of $name",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "inside the shell of fixture-app-1.0" in result.stderr + result.stdout
    assert profile.is_symlink() and profile.resolve().name.endswith("-fixture-app-1.0-env")
    summary = summary_of(logs)
    assert summary["mode"] == "develop" and summary["outputs"] == [str(profile.resolve())]
    command = (only_run_dir(logs) / "command.txt").read_text()
    assert shlex.join(["develop", f"path:{flake}#ok", "--profile", str(profile)]) in command


def test_develop_without_command_just_realises(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    result = nixbuild(
        "develop",
        f"path:{flake}#ok",
        "--log-dir",
        str(tmp_path / "logs"),
        "--out-link",
        str(tmp_path / "p"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (
        (only_run_dir(tmp_path / "logs") / "command.txt")
        .read_text()
        .rstrip()
        .endswith("--command true")
    )


def leftover(marker: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False)
    return found.stdout.split()


@pytest.mark.parametrize(
    "case",
    [(signal.SIGTERM, 143, False), (signal.SIGINT, 130, False), (signal.SIGINT, 130, True)],
    ids=["SIGTERM", "SIGINT", "SIGINT-inherited-ignored"],
)
def test_signal_stops_the_whole_build(
    nix_env: dict[str, str], flake: Path, tmp_path: Path, case: tuple[int, int, bool]
) -> None:
    sig, code, inherited_ignore = case
    # inherited_ignore: a shell starts background jobs with SIGINT ignored; nixbuild still
    # stops on it (only SIGHUP's inherited ignore, nohup's, is kept).
    seconds = str(300 + os.getpid() % 500 + sig + 20 * inherited_ignore)  # unique: leftovers
    (flake / "sleep.txt").write_text(seconds)
    (flake / "nonce.txt").write_text(f"{time.time()}")
    logs = tmp_path / "logs"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nixbuild",
            "build",
            f"path:{flake}#slow",
            "--log-dir",
            str(logs),
            "--no-fallback",
        ],
        cwd=tmp_path,
        env=plain_env(),
        preexec_fn=(lambda: signal.signal(sig, signal.SIG_IGN)) if inherited_ignore else None,  # noqa: PLW1509
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not leftover(f"/bin/sleep {seconds}"):
        assert time.monotonic() < deadline, "the slow builder never started"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert leftover(f"/bin/sleep {seconds}") == []
    summary = summary_of(logs)
    assert summary["status"] == "interrupted" and summary["exit_code"] == code
    (attempt,) = summary["attempts"]
    assert attempt["diagnosis"]["kind"] == "interrupted"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build", "path:{flake}#nope"], "does not provide attribute"),
        (["build", "path:{flake}/missing#ok"], "does not exist"),
        (["build", "two words"], "malformed installable"),
        (["build", "--cores", "x"], "'x' is not a valid integer"),
        (["build", "--frobnicate"], "No such option '--frobnicate'"),
        (["build", "path:{flake}#ok", "--log-dir", "/proc/nixbuild-logs"], "cannot write run logs"),
        (["build", "path:{flake}#ok", "--deadline", "25:99"], "expected a time of day"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(
    nix_env: dict[str, str], flake: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    argv = [a.format(flake=flake) for a in args]
    if "--log-dir" not in argv:
        argv += ["--log-dir", str(tmp_path / "l")]
    result = nixbuild(*argv, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build", "path:{flake}#ok", "--out-link", "{taken}"], "is not a link into the Nix"),
        (["build", "path:{flake}#ok", "--out-link", "/proc/self/status"], "not a link into the"),
        (["build", "path:{flake}#ok", "--out-link", "{elsewhere}"], "not a link into the Nix"),
        (["build", "path:{flake}#ok", "--out-link", "{tmp}/" + "r" * 300], "too long a name"),
        (["develop", "path:{flake}#ok", "--out-link", "{taken}", "-c", "true"], "not a link"),
        (["run", "--", "nix", "build", "path:{flake}#ok", "--out-link", "{taken}"], "not a link"),
        (["build", "path:{flake}#fail", "--fallback", "x y"], "malformed fallback 'x y'"),
        (["build", "path:{flake}#fail", "--fallback", "-x"], "malformed fallback '-x'"),
    ],
)
def test_what_would_fail_after_the_build_is_refused_before_it(
    nix_env: dict[str, str], flake: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    """A result link nix cannot make, or a fallback nix cannot parse, fails only after
    hours of building: exit 2 first, with no run started."""
    taken = tmp_path / "taken"
    taken.mkdir()
    elsewhere = tmp_path / "elsewhere"  # nix replaces only a link into the store
    elsewhere.symlink_to(taken)
    argv = [a.format(flake=flake, taken=taken, tmp=tmp_path, elsewhere=elsewhere) for a in args]
    command, *rest = argv
    result = nixbuild(command, "--log-dir", str(tmp_path / "l"), *rest, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "l").exists()
    assert taken.is_dir()


def test_a_second_run_replaces_its_own_result_link_and_profile(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    """The up-front link checks must let nix replace what it made: a build's store link,
    and a dev shell's profile (a chain: prof -> prof-1-link -> the store)."""
    for _ in range(2):
        for command in (["build", f"path:{flake}#ok"], ["develop", f"path:{flake}#ok"]):
            result = nixbuild(*command, "--log-dir", str(tmp_path / "l"), cwd=tmp_path)
            assert result.returncode == 0, result.stderr
    assert (tmp_path / "result").is_symlink()


def test_a_fallback_that_is_turned_off_is_not_judged(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "NIXBUILD_FALLBACK": "not well formed"}
    result = nixbuild(
        "build", f"path:{flake}#ok", "--no-fallback", "--log-dir", str(tmp_path / "l"),
        "--out-link", str(tmp_path / "result"), cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_a_result_link_that_is_not_utf8_is_refused(
    nix_env: dict[str, str], flake: Path, tmp_path: Path
) -> None:
    # Not an argument (those are checked at the start) but the directory it runs in.
    work = Path(os.fsdecode(bytes(tmp_path) + b"/w\xff"))
    work.mkdir()
    result = nixbuild("build", f"path:{flake}#ok", "--log-dir", str(tmp_path / "l"), cwd=work)
    assert result.returncode == 2, result.stderr
    assert "/w\\xff/result': the path is not valid UTF-8" in result.stderr
    assert not (tmp_path / "l").exists()


def test_missing_nix_exits_3(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path))  # no nix on this PATH
    result = nixbuild("build", ".#x", "--log-dir", str(tmp_path / "l"), cwd=tmp_path, env=env)
    assert result.returncode == 3
    assert "nix is not installed" in result.stderr and "apt-get install nix-bin" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_nix_that_does_not_run_exits_3_and_says_so(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "nix").write_bytes(b"\x7fELF\x00 not a program")  # exec refuses it
    (bindir / "nix").chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:/usr/bin:/bin")
    result = nixbuild("build", ".#x", "--log-dir", str(tmp_path / "l"), cwd=tmp_path, env=env)
    assert result.returncode == 3
    assert f"{bindir / 'nix'} does not work (`nix --version` failed" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["file without x", "directory"])
def test_a_nix_on_path_that_is_not_a_program_is_named(tmp_path: Path, kind: str) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    if kind == "directory":
        (bindir / "nix").mkdir()
    else:
        (bindir / "nix").write_text("#!/bin/sh\n")
        (bindir / "nix").chmod(0o644)
    env = dict(os.environ, PATH=str(bindir))  # the machine's real nix is not on this PATH
    result = nixbuild("build", ".#x", "--log-dir", str(tmp_path / "l"), cwd=tmp_path, env=env)
    assert result.returncode == 3
    assert f"{bindir / 'nix'} is on PATH but is not an executable program" in result.stderr


def test_full_log_dir_does_not_stop_the_build(
    nix_env: dict[str, str], flake: Path, tmp_path: Path, tiny_tmpfs: Path
) -> None:
    (flake / "lines.txt").write_text("5000")  # ~300 KB of log for a 64 KiB file system
    result = nixbuild(
        "build",
        f"path:{flake}#chatty",
        "--log-dir",
        str(tiny_tmpfs),
        "--out-link",
        str(tmp_path / "result"),
        "--quiet",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if "cannot write run logs" in line]
    assert warnings and "the build goes on" in warnings[0]
    assert (tmp_path / "result").resolve().name.endswith("-fixture-chatty-1.0")


def test_a_log_dir_full_from_the_start_is_refused_and_left_as_it_was(
    nix_env: dict[str, str], flake: Path, tmp_path: Path, tiny_tmpfs: Path
) -> None:
    fill_up(tiny_tmpfs)
    result = nixbuild(
        "build", f"path:{flake}#ok", "--log-dir", str(tiny_tmpfs / "logs"), cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert "cannot write run logs" in result.stderr
    assert [p.name for p in tiny_tmpfs.iterdir()] == ["filler"]  # no run dir, no probe


@pytest.mark.parametrize(
    "extra", [["--option", "cores", "8"], ["--max-jobs", "4"], ["-j4"], ["--cores=8"]]
)
def test_parallelism_in_nix_args_is_refused(
    nix_env: dict[str, str], flake: Path, tmp_path: Path, extra: list[str]
) -> None:
    result = nixbuild(
        "build", f"path:{flake}#ok", "--log-dir", str(tmp_path / "l"), "--", *extra, cwd=tmp_path
    )
    assert result.returncode == 2
    assert "would override the parallelism nixbuild manages" in result.stderr
    assert "--cores/--max-jobs" in result.stderr and not (tmp_path / "l").exists()
