"""The recovery loop end to end: the real CLI, real Nix failures, the policy's decisions.

Each test runs `python -m nixbuild build` against the isolated store (conftest's
`nix_env`) on derivations that really fail: tests/fixtures/flake (`cores`, `cores1`,
`alwaysfail`, `slow`, `fetched`) and tests/fixtures/failures (`disk`, `eval`, `hash`).
They read what the run left behind (summary.json, events.jsonl, command.txt) and the
console's decision lines. Waits between attempts are switched off through the options'
environment twins, so nothing here sleeps on nixbuild's behalf.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import plain_env  # the terminal flavour, never CI's
from test_build_e2e import nixbuild

pytestmark = pytest.mark.nix

FAILURES = Path(__file__).parent / "fixtures" / "failures"
DECISION_LINE = re.compile(r"^attempt \d+/\d+ failed: .*$", re.MULTILINE)


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The env twins of the policy's pauses: degrade and network retries start at once."""
    monkeypatch.setenv("NIXBUILD_OOM_DELAY", "0")
    monkeypatch.setenv("NIXBUILD_NETWORK_BACKOFF", "0")
    monkeypatch.setenv("NIXBUILD_SETTLE_DELAY", "0")


@pytest.fixture
def fresh_flake(flake: Path, nix_env: dict[str, str]) -> Path:
    """The fixture flake with a new nonce: the session's store must not already hold a
    success from an earlier test, or nix would have nothing to build (and nothing to fail)."""
    (flake / "nonce.txt").write_text(uuid.uuid4().hex)
    return flake


@pytest.fixture
def failures(tmp_path: Path, nix_env: dict[str, str]) -> Path:
    dest = tmp_path / "failures"
    shutil.copytree(FAILURES, dest)
    (dest / "nonce.txt").write_text(uuid.uuid4().hex)
    return dest


def build(installable: str, *args: str, tmp: Path, name: str = "run") -> Run:
    """`nixbuild build INSTALLABLE ARGS` with its own log dir and GC root under ``tmp``."""
    logs = tmp / f"logs-{name}"
    argv = ["build", installable, "--log-dir", str(logs), "--out-link", str(tmp / f"result-{name}")]
    result = nixbuild(*argv, *args, cwd=tmp)
    assert logs.is_dir(), f"no run directory: exit {result.returncode}\n{result.stderr}"
    return Run(result, logs)


class Run:
    """One finished run: its console output and what it left in its run directory."""

    def __init__(self, result: subprocess.CompletedProcess[str], logs: Path) -> None:
        self.code = result.returncode
        self.stderr = result.stderr
        self.stdout = result.stdout
        (self.dir,) = [p for p in logs.iterdir() if p.is_dir()]
        self.summary: dict[str, Any] = json.loads((self.dir / "summary.json").read_text())
        self.events: list[dict[str, Any]] = [
            json.loads(line) for line in (self.dir / "events.jsonl").read_text().splitlines()
        ]

    @property
    def attempts(self) -> list[dict[str, Any]]:
        attempts = self.summary["attempts"]
        assert isinstance(attempts, list)
        return attempts

    def shape(self) -> list[tuple[int, int, str, str | None, str | None, str | None]]:
        """Per attempt: cores, max-jobs, variant, diagnosis kind, rule, decision action."""
        return [
            (
                a["cores"],
                a["max_jobs"],
                a["variant"],
                a["diagnosis"] and a["diagnosis"]["kind"],
                a["diagnosis"] and a["diagnosis"]["rule"],
                a["decision"] and a["decision"]["action"],
            )
            for a in self.attempts
        ]

    def decision_lines(self) -> list[str]:
        """The console's one line per failed attempt; the structured log has the same lines."""
        shown = DECISION_LINE.findall(self.stderr)
        logged = [e["line"] for e in self.events if e["event"] == "attempt_decided"]
        assert shown == logged, self.stderr
        return shown

    def commands(self) -> list[str]:
        return [
            line
            for line in (self.dir / "command.txt").read_text().splitlines()
            if line and not line.startswith("#")
        ]

    def explain(self) -> str:
        return f"exit {self.code}\n{self.stderr}"


# ---- out of memory: the degrade ladder, the -bin fallback -----------------------------------


def test_parallelism_dependent_oom_degrades_until_it_fits(
    fresh_flake: Path, tmp_path: Path
) -> None:
    run = build(f"path:{fresh_flake}#cores", "--cores", "8", "--max-jobs", "1", tmp=tmp_path)
    assert run.code == 0, run.explain()
    assert run.summary["status"] == "success" and run.summary["exit_code"] == 0
    assert run.summary["variant"] == "source"
    oom = ("oom", "oom.compiler-killed", "degrade")
    built = (2, 1, "source", None, None, None)
    assert run.shape() == [(8, 1, "source", *oom), (4, 1, "source", *oom), built]
    assert [a["decision"]["next"]["cores"] for a in run.attempts[:2]] == [4, 2]
    assert run.decision_lines() == [
        "attempt 1/6 failed: oom (rule oom.compiler-killed) → retry with cores 8→4, max-jobs 1",
        "attempt 2/6 failed: oom (rule oom.compiler-killed) → retry with cores 4→2, max-jobs 1",
    ]
    assert "attempt 3 succeeded" in run.stderr
    assert [re.findall(r"--option cores (\d+)", c) for c in run.commands()] == [
        ["8"],
        ["4"],
        ["2"],
    ]
    (out,) = run.summary["outputs"]
    assert Path(out, "cores.txt").read_text().strip() == "built with 2 cores"
    assert run.stdout.split() == [out]


def test_source_that_always_fails_falls_back_to_the_named_bin(
    fresh_flake: Path, tmp_path: Path
) -> None:
    fallback = f"path:{fresh_flake}#alwaysfail-bin"
    run = build(
        f"path:{fresh_flake}#alwaysfail", "--cores", "2", "--fallback", fallback, tmp=tmp_path
    )
    assert run.code == 0, run.explain()
    assert run.summary["status"] == "fallback" and run.summary["exit_code"] == 0
    assert run.summary["variant"] == "bin"
    oom = ("oom", "oom.compiler-killed")
    assert run.shape() == [
        (2, 1, "source", *oom, "degrade"),
        (1, 1, "source", *oom, "fallback"),
        (1, 1, "bin", None, None, None),
    ]
    assert run.attempts[2]["installable"] == fallback
    assert run.decision_lines() == [
        "attempt 1/6 failed: oom (rule oom.compiler-killed) → retry with cores 2→1, max-jobs 1",
        f"attempt 2/6 failed: oom (rule oom.compiler-killed) → fall back to {fallback}",
    ]
    assert "attempt 3 succeeded" in run.stderr
    assert "nixbuild: fallback after 3 attempt(s), exit 0" in run.stderr
    assert "the derived fallback" not in run.stderr  # named, not derived: nothing to check
    (out,) = run.summary["outputs"]
    assert out.endswith("-fixture-always-bin-1.0")
    assert Path(out, "bin.txt").read_text().strip() == "prebuilt"


def test_no_fallback_gives_up_at_the_floor(fresh_flake: Path, tmp_path: Path) -> None:
    run = build(f"path:{fresh_flake}#alwaysfail", "--cores", "2", "--no-fallback", tmp=tmp_path)
    assert run.code == 1, run.explain()
    assert run.summary["status"] == "failed" and run.summary["exit_code"] == 1
    oom = ("oom", "oom.compiler-killed")
    assert run.shape() == [(2, 1, "source", *oom, "degrade"), (1, 1, "source", *oom, "give_up")]
    assert run.decision_lines()[-1] == (
        "attempt 2/6 failed: oom (rule oom.compiler-killed) → "
        "give up: out of memory even at cores 1, max-jobs 1"
    )
    assert run.summary["outputs"] == [] and run.stdout == ""


def test_derived_bin_fallback_is_checked_and_used(fresh_flake: Path, tmp_path: Path) -> None:
    derived = f"path:{fresh_flake}#alwaysfail-bin"
    run = build(f"path:{fresh_flake}#alwaysfail", "--cores", "2", tmp=tmp_path)
    assert run.code == 0, run.explain()
    assert f"nixbuild: the derived fallback {derived} exists" in run.stderr
    assert run.summary["status"] == "fallback" and run.summary["variant"] == "bin"
    assert [(a["variant"], a["installable"]) for a in run.attempts][-1] == ("bin", derived)
    assert run.attempts[1]["decision"]["action"] == "fallback"
    assert run.decision_lines()[-1].endswith(f"→ fall back to {derived}")


def test_derived_bin_that_does_not_exist_is_not_used(fresh_flake: Path, tmp_path: Path) -> None:
    flake_nix = fresh_flake / "flake.nix"
    text = flake_nix.read_text()
    bin_line = '          alwaysfail-bin = bin "fixture-always-bin-1.0";\n'
    assert bin_line in text
    flake_nix.write_text(text.replace(bin_line, ""))  # the private copy loses the -bin sibling
    run = build(f"path:{fresh_flake}#alwaysfail", "--cores", "2", tmp=tmp_path)
    assert run.code == 1, run.explain()
    assert run.summary["status"] == "failed" and run.summary["variant"] == "source"
    assert "does not exist (nix eval found nothing)" in run.attempts[-1]["decision"]["reason"]
    assert [a["variant"] for a in run.attempts] == ["source", "source"]
    assert run.attempts[-1]["decision"]["action"] == "give_up"
    assert "alwaysfail-bin" not in "\n".join(run.commands())


# ---- network: a flaky server on loopback, a closed port -------------------------------------


class FlakyServer:
    """Serves one file on 127.0.0.1, answering 503 to the first ``failures`` requests."""

    def __init__(self, body: bytes, failures: int) -> None:
        self.body = body
        self.failures = failures
        self.statuses: list[int] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with outer._lock:
                    status = 503 if len(outer.statuses) < outer.failures else 200
                    outer.statuses.append(status)
                payload = outer.body if status == 200 else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the statuses list is the record."""

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 5
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/src.tar.gz"


@pytest.fixture
def flaky_server() -> Iterator[FlakyServer]:
    body = b"source archive " + os.urandom(64).hex().encode()  # unique: a new store path
    flaky = FlakyServer(body, failures=2)
    thread = threading.Thread(target=flaky.server.serve_forever, args=(0.1,), daemon=True)
    thread.start()
    try:
        yield flaky
    finally:
        flaky.server.shutdown()
        flaky.server.server_close()
        thread.join(timeout=10)


def serve_from(flake: Path, url: str, body: bytes) -> None:
    (flake / "url.txt").write_text(url + "\n")
    (flake / "sha256.txt").write_text(hashlib.sha256(body).hexdigest() + "\n")


# nix retries downloads itself (download-attempts, default 5); one request per attempt
# makes each nixbuild attempt meet exactly one answer of the server.
ONE_DOWNLOAD = ("--", "--option", "download-attempts", "1")


def test_network_failures_are_retried_until_the_server_answers(
    fresh_flake: Path, tmp_path: Path, flaky_server: FlakyServer
) -> None:
    serve_from(fresh_flake, flaky_server.url, flaky_server.body)
    run = build(f"path:{fresh_flake}#fetched", "--cores", "2", *ONE_DOWNLOAD, tmp=tmp_path)
    assert run.code == 0, run.explain()
    assert flaky_server.statuses == [503, 503, 200]
    assert run.summary["status"] == "success" and run.summary["exit_code"] == 0
    net = ("network", "network.download-failed", "retry")
    fetched = (2, 1, "source", None, None, None)
    assert run.shape() == [(2, 1, "source", *net), (2, 1, "source", *net), fetched]
    assert [a["decision"]["delay_s"] for a in run.attempts[:2]] == [0.0, 0.0]
    assert run.decision_lines() == [
        "attempt 1/6 failed: network (rule network.download-failed) → retry with the same options",
        "attempt 2/6 failed: network (rule network.download-failed) → retry with the same options",
    ]
    (out,) = run.summary["outputs"]
    assert Path(out).read_bytes() == flaky_server.body


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nobody listens once the with-block closes it


def test_network_retries_exhausted_exit_75(
    fresh_flake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIXBUILD_NETWORK_RETRIES", "1")
    serve_from(fresh_flake, f"http://127.0.0.1:{_closed_port()}/src.tar.gz", uuid.uuid4().bytes)
    run = build(f"path:{fresh_flake}#fetched", "--cores", "2", *ONE_DOWNLOAD, tmp=tmp_path)
    assert run.code == 75, run.explain()
    assert run.summary["status"] == "failed" and run.summary["exit_code"] == 75
    assert run.shape() == [
        (2, 1, "source", "network", "network.download-failed", "retry"),
        (2, 1, "source", "network", "network.download-failed", "give_up"),
    ]
    assert run.decision_lines()[-1].endswith("give up: network still failing after 1 retries")


# ---- disk: garbage collection once, then the advice -----------------------------------------


def test_disk_full_with_gc_collects_once_then_gives_up(failures: Path, tmp_path: Path) -> None:
    run = build(f"path:{failures}#disk", "--cores", "2", "--gc", tmp=tmp_path)
    assert run.code == 75, run.explain()
    assert run.summary["status"] == "failed" and run.summary["exit_code"] == 75
    assert run.shape() == [
        (2, 1, "source", "disk", "disk.no-space", "gc_then_retry"),
        (2, 1, "source", "disk", "disk.no-space", "give_up"),
    ]
    collected = [e for e in run.events if e["event"] == "garbage_collected"]
    assert len(collected) == 1 and collected[0]["ok"] is True, collected
    # The collection happens between the two attempts.
    order = [
        e["event"] for e in run.events if e["event"] in {"attempt_started", "garbage_collected"}
    ]
    assert order == ["attempt_started", "garbage_collected", "attempt_started"]
    first, last = run.decision_lines()
    assert first.endswith("→ collect garbage, then retry with the same options")
    assert "still out of disk space after garbage collection" in last and "20 GB" in last
    assert "nixbuild: garbage collection done" in run.stderr


def test_disk_full_without_gc_gives_up_at_once(failures: Path, tmp_path: Path) -> None:
    run = build(f"path:{failures}#disk", "--cores", "2", tmp=tmp_path)
    assert run.code == 75, run.explain()
    assert run.summary["status"] == "failed" and run.summary["exit_code"] == 75
    assert run.shape() == [(2, 1, "source", "disk", "disk.no-space", "give_up")]
    reason = run.attempts[0]["decision"]["reason"]
    assert "20 GB" in reason and "--gc" in reason and "GB free now" in reason
    assert not [e for e in run.events if e["event"] == "garbage_collected"]
    (line,) = run.decision_lines()
    assert line.endswith(f"give up: {reason}")


# ---- what retrying cannot fix ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("attr", "kind", "rule"),
    [("eval", "eval", "eval.undefined-variable"), ("hash", "hash", "hash.fixed-output-mismatch")],
)
def test_eval_and_hash_stop_after_one_attempt(
    failures: Path, tmp_path: Path, attr: str, kind: str, rule: str
) -> None:
    run = build(f"path:{failures}#{attr}", "--cores", "2", tmp=tmp_path)
    assert run.code == 1, run.explain()
    assert run.summary["status"] == "failed" and run.summary["exit_code"] == 1
    assert run.shape() == [(2, 1, "source", kind, rule, "give_up")]
    assert len(run.commands()) == 1
    (line,) = run.decision_lines()
    assert line.startswith(f"attempt 1/6 failed: {kind} (rule {rule}) → give up: ")


# ---- the run's deadline ---------------------------------------------------------------------


def sleeping(marker: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False)
    return found.stdout.split()


def test_deadline_stops_the_attempt_and_the_run(fresh_flake: Path, tmp_path: Path) -> None:
    seconds = str(600 + os.getpid() % 997)  # a sleep nobody else runs, to find leftovers
    (fresh_flake / "sleep.txt").write_text(seconds)
    run = build(f"path:{fresh_flake}#slow", "--cores", "2", "--max-duration", "3s", tmp=tmp_path)
    assert run.code == 75, run.explain()
    assert sleeping(f"/bin/sleep {seconds}") == []
    assert "nixbuild: deadline reached while building; stopping nix" in run.stderr
    assert run.summary["status"] == "failed" and run.summary["exit_code"] == 75
    assert run.shape() == [(2, 1, "source", "timeout", "timeout.deadline", "give_up")]
    assert "deadline" in run.attempts[0]["decision"]["reason"]
    assert len(run.commands()) == 1  # no further attempt
    assert sum(e["event"] == "attempt_started" for e in run.events) == 1


def test_no_attempt_starts_after_the_deadline(
    fresh_flake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pause before the degraded retry would outlast the run's budget: rather than sleep
    # past the deadline and give up then, nixbuild gives up now and says why.
    monkeypatch.setenv("NIXBUILD_OOM_DELAY", "3s")
    run = build(f"path:{fresh_flake}#cores", "--cores", "8", "--max-duration", "2s", tmp=tmp_path)
    assert run.shape() == [(8, 1, "source", "oom", "oom.compiler-killed", "give_up")]
    assert run.decision_lines() == [
        "attempt 1/6 failed: oom (rule oom.compiler-killed) → give up: "
        "the next attempt (degrade) would start after the deadline"
    ]
    assert len(run.commands()) == 1
    # Time ran out; the build was not judged: "try again later", like a deadline mid-build.
    assert run.code == 75, run.explain()
    assert run.summary["status"] == "failed" and run.summary["exit_code"] == 75


def test_max_attempts_bounds_the_ladder(fresh_flake: Path, tmp_path: Path) -> None:
    run = build(f"path:{fresh_flake}#cores", "--cores", "8", "--max-attempts", "2", tmp=tmp_path)
    assert run.code == 1, run.explain()
    assert run.summary["status"] == "failed" and run.summary["exit_code"] == 1
    oom = ("oom", "oom.compiler-killed")
    assert run.shape() == [(8, 1, "source", *oom, "degrade"), (4, 1, "source", *oom, "give_up")]
    assert run.decision_lines()[-1] == (
        "attempt 2/2 failed: oom (rule oom.compiler-killed) → "
        "give up: all 2 attempts used (last failure: oom)"
    )


# ---- the run ledger: concurrent writers, adaptive start -------------------------------------


def ledger_path(tmp_path: Path) -> Path:
    """Where `nixbuild config` says the ledger is: inside this test's private state dir."""
    shown = nixbuild("config", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    (line,) = [row for row in shown.stdout.splitlines() if row.startswith("ledger: ")]
    path = Path(line.removeprefix("ledger: "))
    assert path.is_relative_to(os.environ["XDG_STATE_HOME"])  # conftest's private_user_dirs
    return path


def test_two_runs_at_once_are_both_recorded(fresh_flake: Path, tmp_path: Path) -> None:
    ledger = ledger_path(tmp_path)
    seconds = f"2.{os.getpid() % 997:03d}"  # a sleep nobody else runs, to see the build start
    (fresh_flake / "sleep.txt").write_text(seconds)

    def start(attr: str) -> tuple[subprocess.Popen[str], Path]:
        logs = tmp_path / f"logs-{attr}"
        argv = ["build", f"path:{fresh_flake}#{attr}", "--cores", "2", "--log-dir", str(logs)]
        argv += ["--out-link", str(tmp_path / f"result-{attr}")]
        proc = subprocess.Popen(
            [sys.executable, "-m", "nixbuild", *argv],
            cwd=tmp_path,
            env=plain_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return proc, logs

    slow, slow_logs = start("slow")
    try:
        # The second run starts while the first is provably inside its build, so both
        # are open in the ledger at once.
        give_up_at = time.monotonic() + 60  # bounds the test, not nixbuild
        while not sleeping(f"/bin/sleep {seconds}"):
            assert slow.poll() is None, slow.communicate()
            assert time.monotonic() < give_up_at, "the slow builder never started"
            time.sleep(0.05)
        ok, ok_logs = start("ok")
        ok_out, ok_err = ok.communicate(timeout=120)
        assert ok.returncode == 0, ok_err
        slow_out, slow_err = slow.communicate(timeout=120)
        assert slow.returncode == 0, slow_err
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.communicate()
    runs = [
        Run(subprocess.CompletedProcess([], 0, ok_out, ok_err), ok_logs),
        Run(subprocess.CompletedProcess([], 0, slow_out, slow_err), slow_logs),
    ]
    history = nixbuild("history", cwd=tmp_path)
    assert history.returncode == 0, history.stderr
    rows = history.stdout.splitlines()
    assert len(rows) == 2, history.stdout
    for run in runs:
        (row,) = [r for r in rows if run.summary["run_id"] in r]
        assert f"{run.summary['installable']}  success (source, exit 0)" in row
        assert row.endswith(": ok@2/1")
    with sqlite3.connect(ledger) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def learn_cores1(flake: Path, tmp_path: Path) -> int:
    """A first run of `cores1` at the machine's default: OOM down to cores 1, then success.
    Returns the default cores it started at."""
    run = build(f"path:{flake}#cores1", tmp=tmp_path, name="first")
    assert run.code == 0, run.explain()
    default = run.attempts[0]["cores"]
    if default == 1:
        pytest.skip("one usable CPU: there is no lower parallelism to learn")
    assert run.shape()[-1] == (1, 1, "source", None, None, None)
    assert {a["diagnosis"]["kind"] for a in run.attempts[:-1]} == {"oom"}
    (flake / "nonce.txt").write_text(uuid.uuid4().hex)  # the next run must really build
    return int(default)


def test_next_run_starts_where_the_last_one_succeeded(fresh_flake: Path, tmp_path: Path) -> None:
    learn_cores1(fresh_flake, tmp_path)
    run = build(f"path:{fresh_flake}#cores1", tmp=tmp_path, name="second")
    assert run.code == 0, run.explain()
    assert run.shape() == [(1, 1, "source", None, None, None)]
    assert (
        "nixbuild: starting at cores 1, max-jobs 1: the last run of this installable "
        "succeeded there after running out of memory (--fresh ignores this)"
    ) in run.stderr


def test_fresh_ignores_what_the_last_run_learned(fresh_flake: Path, tmp_path: Path) -> None:
    default = learn_cores1(fresh_flake, tmp_path)
    run = build(f"path:{fresh_flake}#cores1", "--fresh", tmp=tmp_path, name="fresh")
    assert run.code == 0, run.explain()
    assert run.attempts[0]["cores"] == default
    assert run.attempts[0]["diagnosis"]["kind"] == "oom"
    assert run.shape()[-1] == (1, 1, "source", None, None, None)
    assert "--fresh ignores this" not in run.stderr
    history = nixbuild("history", "--installable", f"path:{fresh_flake}#cores1", cwd=tmp_path)
    chains = [row.rpartition(": ")[2] for row in history.stdout.splitlines()]
    learned = " → ".join(
        f"{a['diagnosis']['kind'] if a['diagnosis'] else 'ok'}@{a['cores']}/{a['max_jobs']}"
        for a in run.attempts
    )
    assert learned.startswith(f"oom@{default}/1 → ") and learned.endswith(" → ok@1/1")
    assert chains == [learned, learned], history.stdout  # newest first, both runs alike
