"""Real Nix produces every failure class from tests/fixtures/failures; the classifier names it.

Each build runs twice: as `nix build -L` (the plain text users and nixbuild's attempt logs
have) and as `--log-format internal-json -v` (what the supervisor reads), both through
read_log_lines, exactly as `nixbuild classify` reads a saved log.
"""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nixbuild.classify import classify
from nixbuild.logstream import read_log_lines
from nixbuild.model import Diagnosis, ExitInfo, Kind, LogLine, Source

pytestmark = pytest.mark.nix

FAILURES = Path(__file__).parent / "fixtures" / "failures"
FORMATS = ["text", "internal-json"]


@pytest.fixture
def failures(tmp_path: Path, nix_env: dict[str, str]) -> Path:
    """A private copy of the failures flake (tests write url.txt / cgroup.txt into it)."""
    dest = tmp_path / "failures"
    shutil.copytree(FAILURES, dest)
    return dest


def nix_build(flake: Path, attr: str, log_format: str, *extra: str) -> tuple[int, str]:
    fmt = ["-L"] if log_format == "text" else ["--log-format", "internal-json", "-v"]
    argv = ["nix", "build", "--no-link", *fmt, *extra, f"path:{flake}#{attr}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=flake, check=False)
    return proc.returncode, proc.stderr


def diagnose(stderr: str, status: int, external: tuple[LogLine, ...] = ()) -> Diagnosis | None:
    return classify(read_log_lines(stderr.splitlines()), ExitInfo(status=status), external)


def assert_classified(stderr: str, status: int, kind: Kind, rule: str, attr: str) -> Diagnosis:
    assert status != 0, stderr
    diagnosis = diagnose(stderr, status)
    assert diagnosis is not None, stderr
    assert (diagnosis.kind, diagnosis.rule) == (kind, rule), f"{diagnosis}\n{stderr}"
    if kind is not Kind.EVAL:
        assert diagnosis.drv is not None
        assert f"failures-{attr}" in diagnosis.drv
    assert diagnosis.evidence
    return diagnosis


@pytest.mark.parametrize("log_format", FORMATS)
@pytest.mark.parametrize(
    ("attr", "extra", "kind", "rule"),
    [
        ("disk", (), Kind.DISK, "disk.no-space"),
        ("oom-ulimit", (), Kind.OOM, "oom.out-of-memory"),
        ("timeout", ("--option", "max-silent-time", "1"), Kind.TIMEOUT,
         "timeout.max-silent-time"),
        ("hash", (), Kind.HASH, "hash.fixed-output-mismatch"),
        ("eval", (), Kind.EVAL, "eval.undefined-variable"),
        ("build", (), Kind.BUILD, "build.compile-error"),
    ],
)  # fmt: skip
def test_real_failure_is_classified(  # noqa: PLR0917 - pytest passes parameters by position
    failures: Path, log_format: str, attr: str, extra: tuple[str, ...], kind: Kind, rule: str
) -> None:
    status, stderr = nix_build(failures, attr, log_format, *extra)
    assert_classified(stderr, status, kind, rule, attr)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the with-block ends


@pytest.mark.parametrize("log_format", FORMATS)
def test_fetch_from_a_closed_port_is_network(failures: Path, log_format: str) -> None:
    (failures / "url.txt").write_text(f"http://127.0.0.1:{_closed_port()}/src.tar.gz\n")
    status, stderr = nix_build(
        failures, "network", log_format, "--option", "download-attempts", "1"
    )
    diagnosis = assert_classified(
        stderr, status, Kind.NETWORK, "network.download-failed", "network"
    )
    assert "Couldn't connect to server" in diagnosis.explanation


class _Unavailable(http.server.BaseHTTPRequestHandler):
    requests = 0

    def do_GET(self) -> None:
        type(self).requests += 1
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test output is the nix log."""


@pytest.fixture
def unavailable_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/src.tar.gz"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("log_format", FORMATS)
def test_fetch_from_a_server_answering_503_is_network(
    failures: Path, unavailable_server: str, log_format: str
) -> None:
    (failures / "url.txt").write_text(unavailable_server + "\n")
    _Unavailable.requests = 0
    status, stderr = nix_build(
        failures, "network", log_format, "--option", "download-attempts", "2"
    )
    diagnosis = assert_classified(
        stderr, status, Kind.NETWORK, "network.download-failed", "network"
    )
    assert "503" in diagnosis.explanation
    assert _Unavailable.requests >= 2  # nix retried the transient error before giving up


# ---- a real kernel OOM kill inside a memory-limited cgroup ---------------------------------

LIMIT = 96 * 1024 * 1024


def _swap_on() -> bool:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("SwapTotal:"):
            return int(line.split()[1]) > 0
    return False


def _memory_cgroup(name: str) -> tuple[Path, Callable[[], int], Callable[[], None]] | str:
    """A memory-limited cgroup: (cgroup.procs path, oom_kill counter, cleanup), or why not.

    Without a swap limit the kernel would swap the allocation out instead of killing it,
    so a machine with swap needs the cgroup's swap limit too."""
    if os.geteuid() != 0:
        return "creating cgroups needs root"
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    v2 = [m.split()[1] for m in mounts if m.split()[2] == "cgroup2"]
    for root in v2:
        controllers = Path(root, "cgroup.controllers")
        if controllers.exists() and "memory" in controllers.read_text().split():
            path = Path(root, name)
            try:
                path.mkdir()
                (path / "memory.max").write_text(f"{LIMIT}\n")
                swap = path / "memory.swap.max"
                if swap.exists():
                    swap.write_text("0\n")
                elif _swap_on():
                    path.rmdir()
                    return "swap is on and this cgroup v2 has no swap limit (memory.swap.max)"
            except OSError as exc:
                shutil.rmtree(path, ignore_errors=True)
                return f"cgroup v2 at {root} refused a memory limit: {exc}"

            def v2_count(path: Path = path) -> int:
                for line in (path / "memory.events").read_text().splitlines():
                    if line.startswith("oom_kill "):
                        return int(line.split()[1])
                return 0

            return path / "cgroup.procs", v2_count, lambda path=path: path.rmdir()
    v1 = [m.split()[1] for m in mounts if m.split()[2] == "cgroup" and "memory" in m.split()[3]]
    for root in v1:
        path = Path(root, name)
        try:
            path.mkdir()
            (path / "memory.limit_in_bytes").write_text(f"{LIMIT}\n")
            swap = path / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(f"{LIMIT}\n")
            elif _swap_on():
                path.rmdir()
                return "swap is on and this cgroup v1 has no swap accounting (memsw)"
        except OSError as exc:
            shutil.rmtree(path, ignore_errors=True)
            return f"cgroup v1 memory controller at {root} refused a limit: {exc}"

        def v1_count(path: Path = path) -> int:
            for line in (path / "memory.oom_control").read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
            return 0

        return path / "cgroup.procs", v1_count, lambda path=path: path.rmdir()
    return "no cgroup v2 with the memory controller and no cgroup v1 memory hierarchy mounted"


@pytest.mark.parametrize("log_format", FORMATS)
def test_kernel_oom_kill_in_a_memory_limited_cgroup_is_oom(failures: Path, log_format: str) -> None:
    cgroup = _memory_cgroup(f"nixbuild-test-oom-{os.getpid()}-{log_format}")
    if isinstance(cgroup, str):
        # Not a failure of nixbuild: this machine (or container) cannot give a process a
        # memory limit, so the kernel cannot be made to OOM-kill one here.
        pytest.skip(cgroup)
    procs, oom_kills, cleanup = cgroup
    try:
        (failures / "cgroup.txt").write_text(f"{procs}\n")
        before = oom_kills()
        status, stderr = nix_build(failures, "oom-cgroup", log_format)
        after = oom_kills()
    finally:
        cleanup()
    assert after > before, f"the kernel did not OOM-kill anything:\n{stderr}"
    # From the log alone: the shell reports its child "Killed" — most likely out of memory.
    diagnosis = assert_classified(stderr, status, Kind.OOM, "oom.shell-killed", "oom-cgroup")
    assert any("Killed" in e.text for e in diagnosis.evidence)
    # nixbuild's cgroup observation agrees; the log's own proof keeps deciding.
    observed = LogLine(0, f"cgroup memory.events oom_kill {before} → {after}", Source.EXTERNAL)
    with_cgroup = diagnose(stderr, status, (observed,))
    assert with_cgroup is not None
    assert (with_cgroup.kind, with_cgroup.rule) == (Kind.OOM, "oom.shell-killed")
